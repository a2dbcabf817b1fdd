//! The 5.x gRPC v2 client session: channels to the configured proxy
//! endpoints, the per-call headers, retries with backoff, the route cache,
//! the Telemetry settings handshake (kept open and re-opened when it breaks),
//! periodic heartbeats and the termination notice.
//!
//! It owns the wire; it knows nothing of the pipeline, and `publish.rs`
//! turns its results into typed publishing results.
//!
//! Endpoint policy: one lazily connected HTTP/2 channel per configured
//! endpoint; calls go to a *preferred* endpoint and fail over to the next
//! one on a transport failure. Every request goes to the configured access
//! points, not to `MessageQueue.broker.endpoints`: proxies in cluster mode
//! (the Java reference, ApsaraMQ and the Rust peers) route any queue
//! themselves and answer with the access point as broker endpoints anyway.
//! A transaction's prepare and its EndTransaction go to the same endpoint,
//! since a Java proxy keeps the half message's bookkeeping locally.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Response};

use super::direct::{DirectChannel, Keepalive};
use super::error::{
    classify, classify_status, grpc_refuses_request, CodeClass, PublishError, ServerCode,
};
use super::message::{duration_to_wire, TopicMessageType};
use super::metadata::{CallHeaders, GrpcCredentials};
use super::pb;
use super::pb::messaging_service_client::MessagingServiceClient;

/// How the bridge reaches one 5.x cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcClientConfig {
    /// Proxy access points, `host:port` (no scheme).
    pub endpoints: Vec<String>,
    /// TLS (rustls with the OS trust roots) instead of plain HTTP/2.
    pub tls: bool,
    /// 5.x namespace (`Resource.resource_namespace`, `x-mq-namespace`);
    /// empty for none.
    pub namespace: String,
    pub credentials: Option<GrpcCredentials>,
    /// Deadline of every unary call, also announced in the settings.
    pub request_timeout: Duration,
    /// `x-mq-client-id`; unique per running client. See [`default_client_id`].
    pub client_id: String,
    /// SendMessage straight on an h2 connection (`direct.rs`) instead of
    /// tonic's channel, for plaintext endpoints. On by default.
    pub direct_send: bool,
}

impl GrpcClientConfig {
    /// A config with defaults (3 s timeout, a fresh client id, no TLS).
    pub fn new(endpoints: Vec<String>) -> Self {
        GrpcClientConfig {
            endpoints,
            tls: false,
            namespace: String::new(),
            credentials: None,
            request_timeout: Duration::from_secs(3),
            client_id: default_client_id(),
            direct_send: true,
        }
    }

    /// Checks what the client relies on; the message names the key.
    pub fn validate(&self) -> Result<(), PublishError> {
        let bad = |reason: String| Err(PublishError::Config { reason });
        if self.endpoints.is_empty() {
            return bad("`endpoints` is empty; list at least one 5.x proxy as host:port".into());
        }
        for e in &self.endpoints {
            if split_host_port(e).is_none() {
                return bad(format!(
                    "endpoint `{e}` is not host:port (no scheme, e.g. `127.0.0.1:8081`)"
                ));
            }
        }
        if self.request_timeout.is_zero() {
            return bad("`request_timeout` must be above zero".into());
        }
        let visible = |s: &str| s.bytes().all(|b| (0x20..0x7f).contains(&b));
        if self.client_id.trim().is_empty() || !visible(&self.client_id) {
            return bad("`client_id` must be non-empty printable ASCII".into());
        }
        if !visible(&self.namespace) {
            return bad("`namespace` must be printable ASCII".into());
        }
        if let Some(c) = &self.credentials {
            if c.access_key.trim().is_empty() || c.secret_key.trim().is_empty() {
                return bad("credentials need both an access key and a secret key".into());
            }
            if !visible(&c.access_key) || c.security_token.as_deref().is_some_and(|t| !visible(t)) {
                return bad("the access key and security token must be printable ASCII".into());
            }
        }
        Ok(())
    }
}

/// `hostname@pid@index@nanos36`, the shape the Java client uses.
pub fn default_client_id() -> String {
    static INDEX: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{}@{}@{}@{}",
        hostname(),
        std::process::id(),
        INDEX.fetch_add(1, Ordering::Relaxed),
        base36(nanos)
    )
}

fn base36(mut n: u128) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .filter(|s| s.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or_else(|| "localhost".to_owned())
}

fn split_host_port(endpoint: &str) -> Option<(String, u16)> {
    if endpoint.contains("://") {
        return None;
    }
    let (host, port) = endpoint.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return None;
    }
    Some((host.to_owned(), port.parse().ok()?))
}

/// Retry behaviour for one RPC (attempts include the first try).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RetryPolicy {
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(16);
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// Why an RPC failed, before the publisher adds topic / message context.
#[derive(Debug, Clone)]
pub(crate) enum RpcFailure {
    /// The server answered with a non-OK v2 status.
    Server {
        code: i32,
        message: String,
        attempts: u32,
    },
    /// The call itself failed (gRPC status, connection).
    Grpc {
        endpoint: String,
        code: tonic::Code,
        message: String,
        attempts: u32,
    },
    Shutdown,
}

/// What a failure is about, to build a precise [`PublishError`].
pub(crate) struct FailureContext<'a> {
    pub topic: &'a str,
    pub message_id: Option<&'a str>,
    pub body_len: usize,
    pub max_body_size: usize,
    pub rpc: &'static str,
}

impl RpcFailure {
    pub(crate) fn into_publish_error(self, ctx: FailureContext<'_>) -> PublishError {
        let what = match ctx.message_id {
            Some(id) => format!("{} of message {id} to topic {}", ctx.rpc, ctx.topic),
            None => format!("{} for topic {}", ctx.rpc, ctx.topic),
        };
        let topic = ctx.topic.to_owned();
        let message_id = ctx.message_id.unwrap_or("-").to_owned();
        match self {
            RpcFailure::Shutdown => PublishError::Shutdown { what },
            RpcFailure::Grpc {
                endpoint,
                code,
                message,
                attempts,
            } => match code {
                tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
                    let v2 = if code == tonic::Code::Unauthenticated {
                        pb::Code::Unauthorized
                    } else {
                        pb::Code::Forbidden
                    };
                    PublishError::Unauthorized {
                        topic,
                        code: ServerCode(v2 as i32),
                        reason: message,
                    }
                }
                code if grpc_refuses_request(code) => PublishError::Refused {
                    what,
                    endpoint,
                    code,
                    reason: message,
                    attempts,
                },
                _ => PublishError::Transport {
                    what,
                    endpoint,
                    status: format!("{code:?}"),
                    reason: message,
                    attempts,
                },
            },
            RpcFailure::Server {
                code,
                message,
                attempts,
            } => match classify_status(code, &message) {
                CodeClass::Ok | CodeClass::Retriable => PublishError::Retriable {
                    what,
                    code: ServerCode(code),
                    reason: message,
                    attempts,
                },
                CodeClass::TopicNotFound => PublishError::TopicNotFound { topic },
                CodeClass::Unauthorized => PublishError::Unauthorized {
                    topic,
                    code: ServerCode(code),
                    reason: message,
                },
                CodeClass::IllegalTopic => PublishError::IllegalTopic {
                    topic,
                    reason: message,
                },
                CodeClass::Misconfigured => PublishError::Misconfigured {
                    topic,
                    code: ServerCode(code),
                    reason: message,
                },
                CodeClass::IllegalMessage => PublishError::IllegalMessage {
                    topic,
                    message_id,
                    code: ServerCode(code).name(),
                    reason: message,
                },
                CodeClass::BodyTooLarge => PublishError::BodyTooLarge {
                    topic,
                    message_id,
                    size: ctx.body_len,
                    max: ctx.max_body_size,
                },
                CodeClass::BodyEmpty => PublishError::BodyEmpty { topic, message_id },
                CodeClass::Permanent => PublishError::Rejected {
                    topic,
                    message_id,
                    code: ServerCode(code),
                    reason: message,
                },
            },
        }
    }
}

/// gRPC codes worth another attempt (possibly on another endpoint).
fn grpc_retriable(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::ResourceExhausted
            | tonic::Code::Aborted
            | tonic::Code::Unknown
    )
}

/// The route of one topic as the producer needs it.
#[derive(Debug, Clone)]
pub(crate) struct TopicRoute {
    /// Writable queues of leader brokers, sorted by (broker name, queue id):
    /// a FIFO group's queue is an index into this list, so it must not
    /// depend on the order a server lists queues in (the rocketmq-rust
    /// proxy lists them from a hash set, in a new order at every query).
    pub writable: Vec<pb::MessageQueue>,
    /// Readable queues (for receive).
    pub readable: Vec<pb::MessageQueue>,
    /// Union of `accept_message_types` over the queues; empty when the
    /// server declares none (or only UNSPECIFIED).
    pub accepted: Vec<TopicMessageType>,
}

impl TopicRoute {
    pub(crate) fn from_queues(queues: Vec<pb::MessageQueue>) -> Self {
        let writable_perm =
            |p: i32| p == pb::Permission::Write as i32 || p == pb::Permission::ReadWrite as i32;
        let readable_perm =
            |p: i32| p == pb::Permission::Read as i32 || p == pb::Permission::ReadWrite as i32;
        let mut accepted = BTreeSet::new();
        for q in &queues {
            for t in &q.accept_message_types {
                if let Some(t) = TopicMessageType::from_wire(*t) {
                    accepted.insert(t);
                }
            }
        }
        let leader = |q: &pb::MessageQueue| q.broker.as_ref().map_or(true, |b| b.id == 0);
        let mut queues = queues;
        queues.sort_by(|a, b| {
            let name = |q: &pb::MessageQueue| q.broker.as_ref().map(|b| b.name.clone());
            (name(a), a.id).cmp(&(name(b), b.id))
        });
        TopicRoute {
            writable: queues
                .iter()
                .filter(|q| writable_perm(q.permission) && leader(q))
                .cloned()
                .collect(),
            readable: queues
                .iter()
                .filter(|q| readable_perm(q.permission) && leader(q))
                .cloned()
                .collect(),
            accepted: accepted.into_iter().collect(),
        }
    }
}

/// Java client's FIFO queue choice: SipHash-2-4 (Guava's default keys) of the
/// UTF-8 group, as a signed long, floor-mod the number of writable queues.
pub(crate) fn fifo_queue_index(group: &str, queues: usize) -> usize {
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new_with_keys(0x0706_0504_0302_0100, 0x0f0e_0d0c_0b0a_0908);
    std::hash::Hasher::write(&mut h, group.as_bytes());
    let hash = std::hash::Hasher::finish(&h) as i64;
    hash.rem_euclid(queues.max(1) as i64) as usize
}

const ROUTE_TTL: Duration = Duration::from_secs(30);
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);
const DEFAULT_MAX_BODY_SIZE: usize = 4 * 1024 * 1024;
const MAX_DECODING_MESSAGE_SIZE: usize = 256 * 1024 * 1024;
const TELEMETRY_RETRY_MIN: Duration = Duration::from_millis(500);
const TELEMETRY_RETRY_MAX: Duration = Duration::from_secs(30);

/// What a telemetry session announces (producer, or a simple consumer used
/// for read-back).
#[derive(Debug, Clone)]
pub(crate) enum SessionRole {
    Producer,
    SimpleConsumer { group: String, topic: String },
}

struct ChannelSlot {
    endpoint: String,
    client: MessagingServiceClient<Channel>,
    /// The SendMessage path of a plaintext endpoint.
    direct: Option<Arc<DirectChannel>>,
}

/// What a unary call gets: tonic's client for the endpoint, and the direct
/// path for SendMessage where there is one.
#[derive(Clone)]
pub(crate) struct SlotClient {
    pub(crate) tonic: MessagingServiceClient<Channel>,
    direct: Option<Arc<DirectChannel>>,
    timeout: Duration,
}

/// Extra time the direct path waits past the announced deadline before it
/// gives up itself (the proxy answers DEADLINE_EXCEEDED first).
const DIRECT_TIMEOUT_MARGIN: Duration = Duration::from_millis(500);

impl SlotClient {
    pub(crate) async fn send_message(
        &mut self,
        request: Request<pb::SendMessageRequest>,
    ) -> Result<Response<pb::SendMessageResponse>, tonic::Status> {
        match &self.direct {
            Some(direct) => {
                direct
                    .unary(
                        "/apache.rocketmq.v2.MessagingService/SendMessage",
                        request,
                        self.timeout + DIRECT_TIMEOUT_MARGIN,
                    )
                    .await
            }
            None => self.tonic.send_message(request).await,
        }
    }
}

pub(crate) struct Client {
    config: GrpcClientConfig,
    slots: Vec<ChannelSlot>,
    preferred: AtomicUsize,
    headers: CallHeaders,
    pub(crate) retry: RetryPolicy,
    routes: Mutex<HashMap<String, (Instant, Arc<TopicRoute>)>>,
    topics: Mutex<BTreeSet<String>>,
    max_body_size: AtomicUsize,
    /// Senders into the open producer telemetry streams, per endpoint.
    sessions: Mutex<Vec<Option<mpsc::Sender<pb::TelemetryCommand>>>>,
    /// Consumer sessions opened for `receive`, keyed by group and topic.
    consumer_sessions: Mutex<HashMap<(String, String), CallHeaders>>,
    /// Transactions whose COMMIT we saw fail (the pipeline re-sends their
    /// message): a check-back of one of them is rolled back.
    failed_commits: Mutex<FailedCommits>,
    handshakes: watch::Sender<u64>,
    shutdown: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    pub(crate) round_robin: AtomicUsize,
}

/// Transaction ids whose COMMIT failed, the most recent `CAP`.
#[derive(Default)]
struct FailedCommits {
    ids: std::collections::HashSet<String>,
    order: std::collections::VecDeque<String>,
}

impl FailedCommits {
    const CAP: usize = 65_536;

    fn insert(&mut self, id: &str) {
        if self.ids.insert(id.to_string()) {
            self.order.push_back(id.to_string());
            if self.order.len() > Self::CAP {
                if let Some(old) = self.order.pop_front() {
                    self.ids.remove(&old);
                }
            }
        }
    }

    fn contains(&self, id: &str) -> bool {
        self.ids.contains(id)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these short locks leaves consistent data.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Client {
    /// Builds channels (connecting lazily) without starting background work.
    pub(crate) fn new(config: GrpcClientConfig) -> Result<Arc<Self>, PublishError> {
        config.validate()?;
        let mut slots = Vec::with_capacity(config.endpoints.len());
        for e in &config.endpoints {
            let scheme = if config.tls { "https" } else { "http" };
            let mut ep = Endpoint::from_shared(format!("{scheme}://{e}"))
                .map_err(|err| PublishError::Config {
                    reason: format!("endpoint `{e}`: {err}"),
                })?
                .connect_timeout(config.request_timeout)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Keepalive::default().interval)
                .keep_alive_timeout(Keepalive::default().timeout)
                .keep_alive_while_idle(true);
            if config.tls {
                ep = ep
                    .tls_config(ClientTlsConfig::new().with_native_roots())
                    .map_err(|err| PublishError::Config {
                        reason: format!("TLS for endpoint `{e}`: {err}"),
                    })?;
            }
            let client = MessagingServiceClient::new(ep.connect_lazy())
                .max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE);
            let direct = if config.direct_send && !config.tls {
                let direct =
                    DirectChannel::new(e, config.request_timeout, MAX_DECODING_MESSAGE_SIZE)
                        .map_err(|reason| PublishError::Config { reason })?;
                Some(Arc::new(direct))
            } else {
                None
            };
            slots.push(ChannelSlot {
                endpoint: e.clone(),
                client,
                direct,
            });
        }
        let headers = CallHeaders::new(
            &config.client_id,
            &config.namespace,
            config.credentials.clone(),
        );
        let n = slots.len();
        Ok(Arc::new(Client {
            config,
            slots,
            preferred: AtomicUsize::new(0),
            headers,
            retry: RetryPolicy::default(),
            routes: Mutex::new(HashMap::new()),
            topics: Mutex::new(BTreeSet::new()),
            max_body_size: AtomicUsize::new(DEFAULT_MAX_BODY_SIZE),
            sessions: Mutex::new(vec![None; n]),
            consumer_sessions: Mutex::new(HashMap::new()),
            failed_commits: Mutex::new(FailedCommits::default()),
            handshakes: watch::channel(0).0,
            shutdown: watch::channel(false).0,
            tasks: Mutex::new(Vec::new()),
            round_robin: AtomicUsize::new(0),
        }))
    }

    /// Opens the telemetry sessions and heartbeats; waits up to the request
    /// timeout for one endpoint to complete the settings handshake.
    pub(crate) async fn start(self: &Arc<Self>) -> Result<(), PublishError> {
        self.start_with(true).await
    }

    /// Starts the telemetry sessions and heartbeats. With `require_answer`,
    /// fails (and stops them) when no endpoint answers the settings
    /// handshake within the request timeout; without, keeps them trying in
    /// the background and returns once one answered or the timeout passed.
    pub(crate) async fn start_with(
        self: &Arc<Self>,
        require_answer: bool,
    ) -> Result<(), PublishError> {
        let mut handshakes = self.handshakes.subscribe();
        for idx in 0..self.slots.len() {
            let task = tokio::spawn(Arc::clone(self).telemetry_loop(
                idx,
                self.headers.clone(),
                SessionRole::Producer,
            ));
            lock(&self.tasks).push(task);
        }
        let hb = tokio::spawn(Arc::clone(self).heartbeat_loop());
        lock(&self.tasks).push(hb);

        let answered = tokio::time::timeout(self.config.request_timeout, async {
            handshakes.wait_for(|n| *n > 0).await.is_ok()
        })
        .await
        .unwrap_or(false);
        if answered {
            return Ok(());
        }
        if !require_answer {
            tracing::warn!(endpoints = %self.config.endpoints.join(","),
                "5.x target not reachable yet (no settings handshake within {:?}); the bridge keeps trying and its routes wait, lag grows meanwhile",
                self.config.request_timeout);
            return Ok(());
        }
        self.stop_tasks();
        Err(PublishError::Transport {
            what: "telemetry settings handshake".into(),
            endpoint: self.config.endpoints.join(","),
            status: "Unavailable".into(),
            reason: format!(
                "no endpoint answered within {:?}",
                self.config.request_timeout
            ),
            attempts: 1,
        })
    }

    pub(crate) fn config(&self) -> &GrpcClientConfig {
        &self.config
    }

    pub(crate) fn max_body_size(&self) -> usize {
        self.max_body_size.load(Ordering::Relaxed)
    }

    pub(crate) fn is_shut_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    pub(crate) fn resource(&self, name: &str) -> pb::Resource {
        pb::Resource {
            resource_namespace: self.config.namespace.clone(),
            name: name.to_owned(),
        }
    }

    /// The configured endpoints as a v2 access point.
    pub(crate) fn access_point(&self) -> pb::Endpoints {
        let parsed: Vec<(String, u16)> = self
            .config
            .endpoints
            .iter()
            .filter_map(|e| split_host_port(e))
            .collect();
        let all = |f: fn(&IpAddr) -> bool| {
            parsed
                .iter()
                .all(|(h, _)| h.parse::<IpAddr>().map(|ip| f(&ip)).unwrap_or(false))
        };
        let scheme = if all(IpAddr::is_ipv4) {
            pb::AddressScheme::IPv4
        } else if all(IpAddr::is_ipv6) {
            pb::AddressScheme::IPv6
        } else {
            pb::AddressScheme::DomainName
        };
        pb::Endpoints {
            scheme: scheme as i32,
            addresses: parsed
                .into_iter()
                .map(|(host, port)| pb::Address {
                    host,
                    port: i32::from(port),
                })
                .collect(),
        }
    }

    fn request<T>(
        &self,
        headers: &CallHeaders,
        message: T,
        timeout: Option<Duration>,
    ) -> Request<T> {
        let mut req =
            Request::from_parts(headers.metadata(), tonic::Extensions::default(), message);
        if let Some(t) = timeout {
            req.set_timeout(t);
        }
        req
    }

    /// The generated client for endpoint `idx` (modulo the endpoint count).
    pub(crate) fn raw_client(&self, idx: usize) -> MessagingServiceClient<Channel> {
        // `validate` guarantees at least one endpoint.
        self.slots[idx % self.slots.len()].client.clone()
    }

    fn endpoint_name(&self, idx: usize) -> String {
        self.slots
            .get(idx)
            .map(|s| s.endpoint.clone())
            .unwrap_or_default()
    }

    /// The endpoint calls go to now.
    pub(crate) fn preferred_endpoint(&self) -> usize {
        self.preferred.load(Ordering::Relaxed) % self.slots.len().max(1)
    }

    fn fail_over(&self, from: usize) {
        let next = (from + 1) % self.slots.len().max(1);
        let _ = self
            .preferred
            .compare_exchange(from, next, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// One unary RPC with retries. `build(attempt)` makes the request body
    /// (attempt starts at 1), `call` performs it, `status` extracts the v2
    /// status to check. `pinned` keeps every attempt on one endpoint.
    /// Returns the response and the endpoint that answered.
    pub(crate) async fn unary<Req, Resp, B, C, Fut, S>(
        &self,
        headers: &CallHeaders,
        pinned: Option<usize>,
        timeout: Duration,
        build: B,
        call: C,
        status: S,
    ) -> Result<(Resp, usize), RpcFailure>
    where
        B: Fn(u32) -> Req,
        C: Fn(SlotClient, Request<Req>) -> Fut,
        Fut: std::future::Future<Output = Result<Response<Resp>, tonic::Status>>,
        S: Fn(&Resp) -> Option<pb::Status>,
    {
        let max = self.retry.max_attempts.max(1);
        let mut attempt = 0;
        loop {
            attempt += 1;
            if self.is_shut_down() {
                return Err(RpcFailure::Shutdown);
            }
            let idx = pinned.unwrap_or_else(|| self.preferred_endpoint());
            let Some(slot) = self.slots.get(idx) else {
                return Err(RpcFailure::Shutdown);
            };
            let req = self.request(headers, build(attempt), Some(timeout));
            let client = SlotClient {
                tonic: slot.client.clone(),
                direct: slot.direct.clone(),
                timeout,
            };
            let failure = match call(client, req).await {
                Ok(resp) => {
                    let resp = resp.into_inner();
                    let st = status(&resp).unwrap_or(pb::Status {
                        code: pb::Code::Ok as i32,
                        message: String::new(),
                    });
                    match classify_status(st.code, &st.message) {
                        CodeClass::Ok => return Ok((resp, idx)),
                        CodeClass::Retriable if attempt < max => {
                            tracing::debug!(
                                endpoint = %slot.endpoint,
                                code = %ServerCode(st.code),
                                reason = %st.message,
                                attempt,
                                "5.x answered a retriable status; retrying"
                            );
                            tokio::time::sleep(self.retry.backoff(attempt)).await;
                            continue;
                        }
                        _ => RpcFailure::Server {
                            code: st.code,
                            message: st.message,
                            attempts: attempt,
                        },
                    }
                }
                Err(s) => {
                    let retriable = grpc_retriable(s.code());
                    if retriable && pinned.is_none() {
                        self.fail_over(idx);
                    }
                    if retriable && attempt < max {
                        tracing::debug!(
                            endpoint = %slot.endpoint,
                            code = ?s.code(),
                            reason = %s.message(),
                            attempt,
                            "5.x call failed; retrying"
                        );
                        tokio::time::sleep(self.retry.backoff(attempt)).await;
                        continue;
                    }
                    RpcFailure::Grpc {
                        endpoint: self.endpoint_name(idx),
                        code: s.code(),
                        message: s.message().to_owned(),
                        attempts: attempt,
                    }
                }
            };
            return Err(failure);
        }
    }

    pub(crate) fn producer_headers(&self) -> &CallHeaders {
        &self.headers
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        self.config.request_timeout
    }

    // ------------------------------------------------------------ routes

    /// The route of `topic`, from the cache when younger than 30 s.
    pub(crate) async fn route(&self, topic: &str) -> Result<Arc<TopicRoute>, RpcFailure> {
        if let Some((at, route)) = lock(&self.routes).get(topic) {
            if at.elapsed() < ROUTE_TTL {
                return Ok(Arc::clone(route));
            }
        }
        let request = pb::QueryRouteRequest {
            topic: Some(self.resource(topic)),
            endpoints: Some(self.access_point()),
        };
        let (resp, _) = self
            .unary(
                &self.headers,
                None,
                self.config.request_timeout,
                |_| request.clone(),
                |mut c, r| async move { c.tonic.query_route(r).await },
                |r: &pb::QueryRouteResponse| r.status.clone(),
            )
            .await?;
        let route = Arc::new(TopicRoute::from_queues(resp.message_queues));
        lock(&self.routes).insert(topic.to_owned(), (Instant::now(), Arc::clone(&route)));
        Ok(route)
    }

    pub(crate) fn invalidate_route(&self, topic: &str) {
        lock(&self.routes).remove(topic);
    }

    // --------------------------------------------------------- settings

    fn settings(&self, role: &SessionRole) -> pb::Settings {
        let pub_sub = match role {
            SessionRole::Producer => pb::settings::PubSub::Publishing(pb::Publishing {
                topics: lock(&self.topics)
                    .iter()
                    .map(|t| self.resource(t))
                    .collect(),
                max_body_size: 0,
                validate_message_type: true,
            }),
            SessionRole::SimpleConsumer { group, topic } => {
                pb::settings::PubSub::Subscription(pb::Subscription {
                    group: Some(self.resource(group)),
                    subscriptions: vec![pb::SubscriptionEntry {
                        topic: Some(self.resource(topic)),
                        expression: Some(pb::FilterExpression {
                            r#type: pb::FilterType::Tag as i32,
                            expression: "*".into(),
                        }),
                    }],
                    ..Default::default()
                })
            }
        };
        let client_type = match role {
            SessionRole::Producer => pb::ClientType::Producer,
            SessionRole::SimpleConsumer { .. } => pb::ClientType::SimpleConsumer,
        };
        pb::Settings {
            client_type: Some(client_type as i32),
            access_point: Some(self.access_point()),
            backoff_policy: Some(pb::RetryPolicy {
                max_attempts: self.retry.max_attempts as i32,
                strategy: Some(pb::retry_policy::Strategy::ExponentialBackoff(
                    pb::ExponentialBackoff {
                        initial: Some(duration_to_wire(self.retry.initial_backoff)),
                        max: Some(duration_to_wire(self.retry.max_backoff)),
                        multiplier: 2.0,
                    },
                )),
            }),
            request_timeout: Some(duration_to_wire(self.config.request_timeout)),
            pub_sub: Some(pub_sub),
            user_agent: Some(pb::Ua {
                language: pb::Language::Java as i32,
                version: super::metadata::CLIENT_VERSION_VALUE.into(),
                platform: format!(
                    "rmq-bridge/{} ({} {})",
                    env!("CARGO_PKG_VERSION"),
                    std::env::consts::OS,
                    std::env::consts::ARCH
                ),
                hostname: hostname(),
            }),
            metric: None,
            client_properties: Default::default(),
        }
    }

    fn settings_command(&self, role: &SessionRole) -> pb::TelemetryCommand {
        pb::TelemetryCommand {
            status: None,
            command: Some(pb::telemetry_command::Command::Settings(
                self.settings(role),
            )),
        }
    }

    /// Registers `topic` as published by this producer; the first time, the
    /// new settings are pushed on every open session and a heartbeat is sent
    /// so proxies register the producer for the topic.
    pub(crate) fn ensure_topic(self: &Arc<Self>, topic: &str) {
        {
            // Every send passes here: no allocation once the topic is known.
            let mut topics = lock(&self.topics);
            if topics.contains(topic) {
                return;
            }
            topics.insert(topic.to_owned());
        }
        let command = self.settings_command(&SessionRole::Producer);
        let senders: Vec<_> = lock(&self.sessions).iter().flatten().cloned().collect();
        for tx in senders {
            let _ = tx.try_send(command.clone());
        }
        let this = Arc::clone(self);
        tokio::spawn(async move {
            this.heartbeat_all(&this.headers, None, pb::ClientType::Producer)
                .await;
        });
    }

    // -------------------------------------------------------- telemetry

    /// Keeps one telemetry stream open on endpoint `idx` until shutdown.
    pub(crate) async fn telemetry_loop(
        self: Arc<Self>,
        idx: usize,
        headers: CallHeaders,
        role: SessionRole,
    ) {
        let mut shutdown = self.shutdown.subscribe();
        let mut delay = TELEMETRY_RETRY_MIN;
        while !*shutdown.borrow() {
            let opened_at = Instant::now();
            self.telemetry_once(idx, &headers, &role, &mut shutdown)
                .await;
            if matches!(role, SessionRole::Producer) {
                if let Some(slot) = lock(&self.sessions).get_mut(idx) {
                    *slot = None;
                }
            }
            if *shutdown.borrow() {
                break;
            }
            if opened_at.elapsed() > TELEMETRY_RETRY_MAX {
                delay = TELEMETRY_RETRY_MIN;
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.changed() => {}
            }
            delay = (delay * 2).min(TELEMETRY_RETRY_MAX);
        }
    }

    async fn telemetry_once(
        &self,
        idx: usize,
        headers: &CallHeaders,
        role: &SessionRole,
        shutdown: &mut watch::Receiver<bool>,
    ) {
        let Some(slot) = self.slots.get(idx) else {
            return;
        };
        let (tx, rx) = mpsc::channel(32);
        if tx.send(self.settings_command(role)).await.is_err() {
            return;
        }
        let req = self.request(headers, ReceiverStream::new(rx), None);
        let mut client = slot.client.clone();
        let opened = tokio::select! {
            r = client.telemetry(req) => r,
            _ = shutdown.changed() => return,
        };
        let mut inbound = match opened {
            Ok(resp) => resp.into_inner(),
            Err(s) => {
                tracing::warn!(
                    endpoint = %slot.endpoint,
                    code = ?s.code(),
                    reason = %s.message(),
                    "5.x telemetry stream could not be opened; will retry"
                );
                return;
            }
        };
        if matches!(role, SessionRole::Producer) {
            if let Some(s) = lock(&self.sessions).get_mut(idx) {
                *s = Some(tx.clone());
            }
        }
        loop {
            let next = tokio::select! {
                m = inbound.message() => m,
                _ = shutdown.changed() => return,
            };
            match next {
                Ok(Some(command)) => {
                    if !self.on_server_command(idx, headers, command, &tx) {
                        return;
                    }
                }
                Ok(None) => {
                    tracing::info!(endpoint = %slot.endpoint, "5.x closed the telemetry stream; reopening");
                    return;
                }
                Err(s) => {
                    tracing::warn!(
                        endpoint = %slot.endpoint,
                        code = ?s.code(),
                        reason = %s.message(),
                        "5.x telemetry stream broke; reopening"
                    );
                    return;
                }
            }
        }
    }

    /// Handles one server frame; false asks to reopen the stream.
    fn on_server_command(
        &self,
        idx: usize,
        headers: &CallHeaders,
        command: pb::TelemetryCommand,
        tx: &mpsc::Sender<pb::TelemetryCommand>,
    ) -> bool {
        use pb::telemetry_command::Command;
        if let Some(st) = &command.status {
            if classify(st.code) != CodeClass::Ok {
                tracing::warn!(
                    endpoint = %self.endpoint_name(idx),
                    code = %ServerCode(st.code),
                    reason = %st.message,
                    "5.x telemetry reported an error status"
                );
            }
        }
        match command.command {
            Some(Command::Settings(settings)) => {
                if let Some(pb::settings::PubSub::Publishing(p)) = &settings.pub_sub {
                    if p.max_body_size > 0 {
                        self.max_body_size
                            .store(p.max_body_size as usize, Ordering::Relaxed);
                    }
                }
                self.handshakes.send_modify(|n| *n += 1);
            }
            Some(Command::RecoverOrphanedTransactionCommand(c)) => {
                self.resolve_orphan(idx, headers.clone(), c);
            }
            Some(Command::PrintThreadStackTraceCommand(c)) => {
                let _ = tx.try_send(pb::TelemetryCommand {
                    status: Some(ok_status()),
                    command: Some(Command::ThreadStackTrace(pb::ThreadStackTrace {
                        nonce: c.nonce,
                        thread_stack_trace: Some(
                            "rmq-bridge (Rust, tokio): no JVM thread dump available".into(),
                        ),
                    })),
                });
            }
            Some(Command::VerifyMessageCommand(c)) => {
                // A producer cannot consume; answer like the Java client.
                let _ = tx.try_send(pb::TelemetryCommand {
                    status: Some(pb::Status {
                        code: pb::Code::NotImplemented as i32,
                        message: "rmq-bridge producer does not verify messages".into(),
                    }),
                    command: Some(Command::VerifyMessageResult(pb::VerifyMessageResult {
                        nonce: c.nonce,
                    })),
                });
            }
            Some(Command::ReconnectEndpointsCommand(_)) => return false,
            Some(other) => {
                tracing::debug!(command = ?other, "ignoring 5.x telemetry command");
            }
            None => {}
        }
        true
    }

    /// Remembers that our COMMIT of `transaction_id` failed: the pipeline
    /// re-sends the message, so a check-back of this half message may roll
    /// it back.
    pub(crate) fn commit_failed(&self, transaction_id: &str) {
        lock(&self.failed_commits).insert(transaction_id);
    }

    /// The 5.x broker asks about a transaction half message of ours that it
    /// holds unresolved. If our COMMIT of it failed, the pipeline re-sends
    /// the message: roll the orphan back (no duplicate). Otherwise commit
    /// it: either our COMMIT was answered OK and then lost between proxy and
    /// broker (the proxy forwards it one way), or this process does not know
    /// it (a restart); every transaction the bridge sends comes from a 4.x
    /// message that is already committed, so committing can at worst
    /// duplicate it, while rolling back would lose it.
    fn resolve_orphan(
        &self,
        idx: usize,
        headers: CallHeaders,
        c: pb::RecoverOrphanedTransactionCommand,
    ) {
        let message = c.message.unwrap_or_default();
        let topic = message.topic.map(|t| t.name).unwrap_or_default();
        let message_id = message
            .system_properties
            .map(|s| s.message_id)
            .unwrap_or_default();
        let rollback = lock(&self.failed_commits).contains(&c.transaction_id);
        let resolution = if rollback {
            pb::TransactionResolution::Rollback
        } else {
            pb::TransactionResolution::Commit
        };
        let request = pb::EndTransactionRequest {
            topic: Some(self.resource(&topic)),
            message_id: message_id.clone(),
            transaction_id: c.transaction_id,
            resolution: resolution as i32,
            source: pb::TransactionSource::SourceServerCheck as i32,
            trace_context: String::new(),
        };
        let Some(slot) = self.slots.get(idx) else {
            return;
        };
        let mut client = slot.client.clone();
        let req = self.request(&headers, request, Some(self.config.request_timeout));
        tokio::spawn(async move {
            let what = if rollback {
                "rolled back an orphaned 5.x transaction half message (its COMMIT failed; it is re-sent)"
            } else {
                "committed an orphaned 5.x transaction half message (its COMMIT was lost after the proxy, or this process restarted)"
            };
            match client.end_transaction(req).await {
                Ok(r) => tracing::info!(
                    %topic, %message_id,
                    code = %ServerCode(r.into_inner().status.map_or(0, |s| s.code)),
                    "{what}"
                ),
                Err(s) => {
                    tracing::warn!(%topic, %message_id, code = ?s.code(), rollback, "resolving an orphaned transaction failed; the 5.x broker will ask again")
                }
            }
        });
    }

    // -------------------------------------------------------- heartbeat

    async fn heartbeat_loop(self: Arc<Self>) {
        let mut shutdown = self.shutdown.subscribe();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(HEARTBEAT_INTERVAL) => {}
                _ = shutdown.changed() => return,
            }
            self.heartbeat_all(&self.headers, None, pb::ClientType::Producer)
                .await;
            let consumers: Vec<_> = lock(&self.consumer_sessions)
                .iter()
                .map(|((g, _), h)| (g.clone(), h.clone()))
                .collect();
            for (group, headers) in consumers {
                self.heartbeat_all(&headers, Some(&group), pb::ClientType::SimpleConsumer)
                    .await;
            }
        }
    }

    /// One heartbeat to every endpoint; failures are logged only.
    pub(crate) async fn heartbeat_all(
        &self,
        headers: &CallHeaders,
        group: Option<&str>,
        client_type: pb::ClientType,
    ) {
        for (idx, slot) in self.slots.iter().enumerate() {
            let request = pb::HeartbeatRequest {
                group: group.map(|g| self.resource(g)),
                client_type: client_type as i32,
            };
            let req = self.request(headers, request, Some(self.config.request_timeout));
            let mut client = slot.client.clone();
            match client.heartbeat(req).await {
                Ok(r) => {
                    let st = r.into_inner().status.unwrap_or_else(ok_status);
                    if classify(st.code) != CodeClass::Ok {
                        tracing::debug!(endpoint = %self.endpoint_name(idx), code = %ServerCode(st.code), reason = %st.message, "5.x heartbeat not accepted");
                    }
                }
                Err(s) => {
                    tracing::debug!(endpoint = %slot.endpoint, code = ?s.code(), "5.x heartbeat failed")
                }
            }
        }
    }

    // ---------------------------------------------------------- consumer

    /// Headers of the simple-consumer session for (group, topic), opening
    /// it (telemetry + heartbeat) the first time.
    pub(crate) async fn consumer_headers(
        self: &Arc<Self>,
        group: &str,
        topic: &str,
    ) -> CallHeaders {
        let key = (group.to_owned(), topic.to_owned());
        if let Some(h) = lock(&self.consumer_sessions).get(&key) {
            return h.clone();
        }
        let client_id: String = format!("{}-consumer-{group}-{topic}", self.config.client_id)
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .collect();
        let headers = CallHeaders::new(
            &client_id,
            &self.config.namespace,
            self.config.credentials.clone(),
        );
        lock(&self.consumer_sessions).insert(key, headers.clone());
        let role = SessionRole::SimpleConsumer {
            group: group.to_owned(),
            topic: topic.to_owned(),
        };
        let mut handshakes = self.handshakes.subscribe();
        let before = *handshakes.borrow();
        for idx in 0..self.slots.len() {
            let task =
                tokio::spawn(Arc::clone(self).telemetry_loop(idx, headers.clone(), role.clone()));
            lock(&self.tasks).push(task);
        }
        let _ = tokio::time::timeout(
            self.config.request_timeout,
            handshakes.wait_for(|n| *n > before),
        )
        .await;
        self.heartbeat_all(&headers, Some(group), pb::ClientType::SimpleConsumer)
            .await;
        headers
    }

    // ---------------------------------------------------------- shutdown

    pub(crate) fn stop_tasks(&self) {
        self.shutdown.send_replace(true);
        for s in lock(&self.sessions).iter_mut() {
            *s = None;
        }
    }

    /// Tells every endpoint we are leaving, then stops background tasks.
    pub(crate) async fn shutdown(&self) {
        if self.is_shut_down() {
            return;
        }
        let mut sessions: Vec<(Option<String>, CallHeaders)> = vec![(None, self.headers.clone())];
        sessions.extend(
            lock(&self.consumer_sessions)
                .iter()
                .map(|((g, _), h)| (Some(g.clone()), h.clone())),
        );
        for (group, headers) in sessions {
            for slot in &self.slots {
                let request = pb::NotifyClientTerminationRequest {
                    group: group.as_deref().map(|g| self.resource(g)),
                };
                let req = self.request(&headers, request, Some(self.config.request_timeout));
                let mut client = slot.client.clone();
                if let Err(s) = client.notify_client_termination(req).await {
                    tracing::debug!(endpoint = %slot.endpoint, code = ?s.code(), "NotifyClientTermination failed");
                }
            }
        }
        self.stop_tasks();
        let tasks: Vec<_> = lock(&self.tasks).drain(..).collect();
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(1), t).await;
        }
    }
}

pub(crate) fn ok_status() -> pb::Status {
    pb::Status {
        code: pb::Code::Ok as i32,
        message: "OK".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_validation_names_the_key() {
        let mut c = GrpcClientConfig::new(vec!["127.0.0.1:8081".into()]);
        assert!(c.validate().is_ok());
        c.endpoints = vec!["http://x:1".into()];
        assert!(c.validate().unwrap_err().to_string().contains("host:port"));
        c.endpoints = vec![];
        assert!(c.validate().unwrap_err().to_string().contains("endpoints"));
    }

    #[test]
    fn client_id_shape() {
        let id = default_client_id();
        assert_eq!(id.split('@').count(), 4);
        assert_ne!(id, default_client_id());
    }

    #[test]
    fn a_fifo_group_keeps_its_queue_whatever_order_the_server_lists_queues_in() {
        let queue = |broker: &str, id: i32| pb::MessageQueue {
            id,
            permission: pb::Permission::ReadWrite as i32,
            broker: Some(pb::Broker {
                name: broker.into(),
                id: 0,
                ..Default::default()
            }),
            ..Default::default()
        };
        let listed = vec![queue("b", 1), queue("a", 3), queue("a", 0), queue("b", 0)];
        let mut reversed = listed.clone();
        reversed.reverse();
        let pick = |queues: Vec<pb::MessageQueue>, group: &str| {
            let route = TopicRoute::from_queues(queues);
            let q = &route.writable[fifo_queue_index(group, route.writable.len())];
            (q.broker.as_ref().map(|b| b.name.clone()), q.id)
        };
        for g in ["g1", "g13", "order-7", "x"] {
            assert_eq!(
                pick(listed.clone(), g),
                pick(reversed.clone(), g),
                "group {g}"
            );
        }
    }

    #[test]
    fn fifo_queue_choice_is_stable_and_in_range() {
        for n in 1..10 {
            let a = fifo_queue_index("order-42", n);
            assert!(a < n);
            assert_eq!(a, fifo_queue_index("order-42", n));
        }
        // Guava's Hashing.sipHash24() of the empty input is the reference
        // SipHash-2-4 vector 0x726fdb47dd0e0e31.
        #[allow(deprecated)]
        let mut h =
            std::hash::SipHasher::new_with_keys(0x0706_0504_0302_0100, 0x0f0e_0d0c_0b0a_0908);
        std::hash::Hasher::write(&mut h, b"");
        assert_eq!(std::hash::Hasher::finish(&h), 0x726f_db47_dd0e_0e31);
    }

    #[test]
    fn backoff_grows_to_a_cap() {
        let p = RetryPolicy::default();
        assert_eq!(p.backoff(1), Duration::from_millis(100));
        assert_eq!(p.backoff(2), Duration::from_millis(200));
        assert_eq!(p.backoff(10), Duration::from_secs(2));
    }

    #[test]
    fn route_keeps_leader_writable_queues_and_types() {
        let q = |id, perm: pb::Permission, broker_id, t: pb::MessageType| pb::MessageQueue {
            topic: None,
            id,
            permission: perm as i32,
            broker: Some(pb::Broker {
                name: "b".into(),
                id: broker_id,
                endpoints: None,
            }),
            accept_message_types: vec![t as i32],
        };
        let r = TopicRoute::from_queues(vec![
            q(0, pb::Permission::ReadWrite, 0, pb::MessageType::Fifo),
            q(1, pb::Permission::Read, 0, pb::MessageType::Fifo),
            q(2, pb::Permission::ReadWrite, 1, pb::MessageType::Fifo),
            q(3, pb::Permission::Write, 0, pb::MessageType::Unspecified),
        ]);
        assert_eq!(
            r.writable.iter().map(|q| q.id).collect::<Vec<_>>(),
            vec![0, 3]
        );
        assert_eq!(r.accepted, vec![TopicMessageType::Fifo]);
    }
}
