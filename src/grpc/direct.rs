//! Unary gRPC calls straight on an `h2` connection, for the hot call
//! (SendMessage, one per forwarded message). Owns: one plaintext HTTP/2
//! connection per endpoint, (re)connected lazily, and the gRPC framing of
//! one request and one response.
//!
//! Why not tonic's `Channel`: its path costs a tower `Buffer` hop to a
//! worker task, hyper's dispatch channel to the connection task, a task
//! spawned per request to await the response (and one to pipe the body),
//! and the wakeups between them: ~70 % of the bridge's CPU per message with
//! single sends (docs/bench-results.md). Here the caller's task opens the
//! stream, hands the whole body to h2 and awaits the answer itself; only the
//! connection task sits between it and the socket.
//!
//! A connection is dropped, so that the next call connects anew, when it
//! fails, when its HTTP/2 PING goes unanswered ([`Keepalive`]) and when a
//! call's deadline passes without an answer: the proxy answers
//! DEADLINE_EXCEEDED itself before our own deadline, so silence past it
//! means a half-open connection (a lost host, a NAT or load balancer that
//! forgot the flow), on which every later call would wait in vain until
//! the kernel gave up (~15 min). The socket has TCP keepalive as well.
//!
//! Errors come back as `tonic::Status` with the codes tonic would give, so
//! retries and error classification are the same on both paths. TLS
//! endpoints keep tonic's `Channel` (see `client.rs`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use tokio::net::TcpStream;
use tokio::sync::{Mutex as AsyncMutex, Notify};
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};

/// HTTP/2 windows: a batch of 32 x 1 MiB must not stall on flow control.
const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
/// gRPC message header: compressed flag + big-endian length.
const FRAME_HEADER: usize = 5;
/// TCP keepalive of the socket: first probe after this much silence, then
/// one every interval; the kernel drops it after the retries go unanswered,
/// or when sent data stays unacknowledged for the user timeout.
const TCP_KEEPALIVE_TIME: Duration = Duration::from_secs(30);
const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
#[cfg(target_os = "linux")]
const TCP_KEEPALIVE_RETRIES: u32 = 3;
#[cfg(target_os = "linux")]
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(60);

/// How a connection is kept honest while it is open: an HTTP/2 PING every
/// `interval`, and a connection whose PING is not answered within
/// `timeout` is dropped.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Keepalive {
    pub(crate) interval: Duration,
    pub(crate) timeout: Duration,
}

impl Default for Keepalive {
    fn default() -> Self {
        Keepalive {
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
        }
    }
}

/// The lazily connected HTTP/2 connection to one endpoint.
pub(crate) struct DirectChannel {
    endpoint: String,
    keepalive: Keepalive,
    authority: http::uri::Authority,
    connect_timeout: Duration,
    max_response: usize,
    /// The live connection, if any; `None` once it was dropped.
    conn: AsyncMutex<Option<Conn>>,
    connections: AtomicU64,
}

/// One HTTP/2 connection: its number, its sender, and its life.
#[derive(Clone)]
struct Conn {
    id: u64,
    sender: h2::client::SendRequest<Bytes>,
    life: Arc<ConnLife>,
}

/// Shared with the task that drives the connection.
#[derive(Default)]
struct ConnLife {
    /// Set when the task ended: the connection is closed.
    ended: AtomicBool,
    /// Tells the task to close the connection now.
    close: Notify,
}

impl DirectChannel {
    /// `endpoint` is `host:port`; nothing is connected yet.
    pub(crate) fn new(
        endpoint: &str,
        connect_timeout: Duration,
        max_response: usize,
    ) -> Result<Self, String> {
        let authority = endpoint
            .parse::<http::uri::Authority>()
            .map_err(|e| format!("endpoint `{endpoint}` is not host:port: {e}"))?;
        Ok(DirectChannel {
            endpoint: endpoint.to_string(),
            keepalive: Keepalive::default(),
            authority,
            connect_timeout,
            max_response,
            conn: AsyncMutex::new(None),
            connections: AtomicU64::new(0),
        })
    }

    #[cfg(test)]
    pub(crate) fn with_keepalive(mut self, keepalive: Keepalive) -> Self {
        self.keepalive = keepalive;
        self
    }

    /// One unary call of `path` (e.g. `/apache.rocketmq.v2.MessagingService/SendMessage`)
    /// with the request's metadata; at most `timeout` in all.
    pub(crate) async fn unary<Req, Resp>(
        &self,
        path: &'static str,
        request: tonic::Request<Req>,
        timeout: Duration,
    ) -> Result<tonic::Response<Resp>, Status>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
    {
        let mut used = None;
        let result = tokio::time::timeout(timeout, self.call(path, request, &mut used)).await;
        match result {
            Ok(result) => result,
            Err(_) => {
                if let Some(conn) = used {
                    self.drop_connection(&conn).await;
                }
                Err(Status::deadline_exceeded(format!(
                    "no answer from {} within {timeout:?}; its connection is dropped and the \
                     next call connects anew",
                    self.endpoint
                )))
            }
        }
    }

    /// The call; `used` is the connection it went on, as soon as known.
    async fn call<Req, Resp>(
        &self,
        path: &'static str,
        request: tonic::Request<Req>,
        used: &mut Option<Conn>,
    ) -> Result<tonic::Response<Resp>, Status>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
    {
        let (metadata, _extensions, message) = request.into_parts();
        let body = encode_frame(&message);
        let http_request = self.http_request(path, metadata.into_headers())?;
        let conn = self.connection().await?;
        *used = Some(conn.clone());
        // Waiting for a free stream happens outside the slot's lock.
        let mut sender = match conn.sender.clone().ready().await {
            Ok(sender) => sender,
            Err(error) => return Err(self.transport_error(&conn, error).await),
        };
        let conn = &conn;
        let (response, mut stream) = match sender.send_request(http_request, false) {
            Ok(pair) => pair,
            Err(error) => return Err(self.transport_error(conn, error).await),
        };
        if let Err(error) = stream.send_data(body, true) {
            return Err(self.transport_error(conn, error).await);
        }
        let response = match response.await {
            Ok(response) => response,
            Err(error) => return Err(self.transport_error(conn, error).await),
        };
        let (parts, mut body) = response.into_parts();
        if parts.status != StatusCode::OK {
            return Err(http_status(parts.status));
        }
        // Trailers-only answer: the status is in the headers.
        if let Some(status) = grpc_status(&parts.headers) {
            status?;
        }
        let mut received = BytesMut::new();
        while let Some(chunk) = body.data().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(error) => return Err(self.transport_error(conn, error).await),
            };
            let _ = body.flow_control().release_capacity(chunk.len());
            if received.len() + chunk.len() > self.max_response + FRAME_HEADER {
                return Err(Status::resource_exhausted(format!(
                    "answer from {} is larger than {} bytes",
                    self.endpoint, self.max_response
                )));
            }
            received.extend_from_slice(&chunk);
        }
        let trailers = match body.trailers().await {
            Ok(trailers) => trailers.unwrap_or_default(),
            Err(error) => return Err(self.transport_error(conn, error).await),
        };
        match grpc_status(&trailers) {
            Some(status) => status?,
            None => {
                return Err(Status::internal(format!(
                    "answer from {} has no grpc-status",
                    self.endpoint
                )))
            }
        }
        let message = decode_frame::<Resp>(received.freeze())?;
        Ok(tonic::Response::from_parts(
            MetadataMap::from_headers(parts.headers),
            message,
            tonic::Extensions::default(),
        ))
    }

    fn http_request(&self, path: &'static str, headers: HeaderMap) -> Result<Request<()>, Status> {
        let uri = Uri::builder()
            .scheme("http")
            .authority(self.authority.clone())
            .path_and_query(path)
            .build()
            .map_err(|e| Status::internal(format!("request URI for {path}: {e}")))?;
        let mut request = Request::new(());
        *request.method_mut() = Method::POST;
        *request.uri_mut() = uri;
        *request.version_mut() = http::Version::HTTP_2;
        *request.headers_mut() = headers;
        let headers = request.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        headers.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
        Ok(request)
    }

    /// The live connection, connecting first if there is none or it ended.
    async fn connection(&self) -> Result<Conn, Status> {
        let mut slot = self.conn.lock().await;
        if let Some(conn) = slot.as_ref() {
            if !conn.life.ended.load(Ordering::Acquire) {
                return Ok(conn.clone());
            }
        }
        *slot = None;
        let (sender, life) = self.connect().await?;
        let conn = Conn {
            id: self.connections.fetch_add(1, Ordering::Relaxed),
            sender,
            life,
        };
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Closes `conn` and forgets it, so the next call connects anew (its
    /// other streams fail as UNAVAILABLE and are retried).
    async fn drop_connection(&self, conn: &Conn) {
        conn.life.close.notify_one();
        let mut slot = self.conn.lock().await;
        if slot.as_ref().is_some_and(|live| live.id == conn.id) {
            *slot = None;
        }
    }

    async fn connect(&self) -> Result<(h2::client::SendRequest<Bytes>, Arc<ConnLife>), Status> {
        let unavailable = |what: String| {
            Status::unavailable(format!("connecting to 5.x proxy {}: {what}", self.endpoint))
        };
        let tcp = match tokio::time::timeout(
            self.connect_timeout,
            TcpStream::connect(self.endpoint.as_str()),
        )
        .await
        {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(error)) => return Err(unavailable(error.to_string())),
            Err(_) => {
                return Err(unavailable(format!(
                    "timed out after {:?}",
                    self.connect_timeout
                )))
            }
        };
        tune_socket(&tcp);
        let handshake = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .handshake::<_, Bytes>(tcp);
        let (sender, mut connection) =
            match tokio::time::timeout(self.connect_timeout, handshake).await {
                Ok(Ok(pair)) => pair,
                Ok(Err(error)) => return Err(unavailable(format!("HTTP/2 handshake: {error}"))),
                Err(_) => return Err(unavailable("HTTP/2 handshake timed out".to_string())),
            };
        let life = Arc::new(ConnLife::default());
        let pings = connection.ping_pong();
        let keepalive = self.keepalive;
        let endpoint = self.endpoint.clone();
        let task_life = Arc::clone(&life);
        tokio::spawn(async move {
            // Whichever ends first ends the connection: dropping it closes
            // the socket.
            let why = tokio::select! {
                result = connection => match result {
                    Ok(()) => "closed".to_string(),
                    Err(error) => error.to_string(),
                },
                why = keep_alive(pings, keepalive) => why,
                () = task_life.close.notified() => {
                    "a call's deadline passed without an answer".to_string()
                }
            };
            task_life.ended.store(true, Ordering::Release);
            tracing::debug!(%endpoint, reason = %why, "5.x HTTP/2 connection closed");
        });
        Ok((sender, life))
    }

    /// Maps an h2 error like tonic does and forgets a broken connection, so
    /// the next call connects again.
    async fn transport_error(&self, conn: &Conn, error: h2::Error) -> Status {
        // A stream reset by the server leaves the connection usable.
        let stream_only = error.is_reset() && !error.is_go_away();
        if !stream_only {
            self.drop_connection(conn).await;
        }
        let code = match error.reason() {
            Some(h2::Reason::REFUSED_STREAM) => Code::Unavailable,
            Some(h2::Reason::CANCEL) => Code::Cancelled,
            Some(h2::Reason::ENHANCE_YOUR_CALM) => Code::ResourceExhausted,
            Some(h2::Reason::INADEQUATE_SECURITY) => Code::PermissionDenied,
            Some(_) if !error.is_go_away() => Code::Internal,
            _ => Code::Unavailable,
        };
        Status::new(code, format!("5.x proxy {}: {error}", self.endpoint))
    }
}

/// PINGs the peer every `interval` while the connection lives; returns why
/// the connection must go when a PING is not answered within `timeout`.
async fn keep_alive(pings: Option<h2::PingPong>, keepalive: Keepalive) -> String {
    let Some(mut pings) = pings else {
        // Taken once per connection, so always there; without it, no PINGs.
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(keepalive.interval).await;
        match tokio::time::timeout(keepalive.timeout, pings.ping(h2::Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            Ok(Err(error)) => return format!("PING failed: {error}"),
            Err(_) => {
                return format!(
                    "PING unanswered within {:?} (half-open connection)",
                    keepalive.timeout
                )
            }
        }
    }
}

/// Socket options of a new connection: no Nagle delay, and TCP keepalive so
/// the kernel notices a vanished peer on an idle socket.
fn tune_socket(tcp: &TcpStream) {
    let _ = tcp.set_nodelay(true);
    let sock = socket2::SockRef::from(tcp);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(TCP_KEEPALIVE_TIME)
        .with_interval(TCP_KEEPALIVE_INTERVAL);
    #[cfg(target_os = "linux")]
    let keepalive = keepalive.with_retries(TCP_KEEPALIVE_RETRIES);
    if let Err(error) = sock.set_tcp_keepalive(&keepalive) {
        tracing::debug!(%error, "cannot set TCP keepalive on a 5.x connection");
    }
    #[cfg(target_os = "linux")]
    if let Err(error) = sock.set_tcp_user_timeout(Some(TCP_USER_TIMEOUT)) {
        tracing::debug!(%error, "cannot set TCP_USER_TIMEOUT on a 5.x connection");
    }
}

fn encode_frame<M: prost::Message>(message: &M) -> Bytes {
    let len = message.encoded_len();
    let mut buf = BytesMut::with_capacity(FRAME_HEADER + len);
    buf.put_u8(0);
    buf.put_u32(len as u32);
    // Cannot fail: the buffer has room for exactly encoded_len bytes.
    let _ = message.encode(&mut buf);
    buf.freeze()
}

fn decode_frame<M: prost::Message + Default>(mut data: Bytes) -> Result<M, Status> {
    if data.len() < FRAME_HEADER {
        return Err(Status::internal(format!(
            "gRPC answer of {} bytes has no message",
            data.len()
        )));
    }
    let compressed = data.get_u8();
    let len = data.get_u32() as usize;
    if compressed != 0 {
        return Err(Status::internal(
            "gRPC answer is compressed, which was not asked for",
        ));
    }
    if len != data.len() {
        return Err(Status::internal(format!(
            "gRPC answer announces {len} bytes and carries {}",
            data.len()
        )));
    }
    M::decode(data).map_err(|e| Status::internal(format!("decoding the gRPC answer: {e}")))
}

/// `Some(Ok)` for grpc-status 0, `Some(Err)` for another, `None` if absent.
fn grpc_status(headers: &HeaderMap) -> Option<Result<(), Status>> {
    let value = headers.get("grpc-status")?;
    let code = value
        .to_str()
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .map(Code::from_i32)
        .unwrap_or(Code::Unknown);
    if code == Code::Ok {
        return Some(Ok(()));
    }
    let message = headers
        .get("grpc-message")
        .map(|m| percent_decode(m.as_bytes()))
        .unwrap_or_default();
    Some(Err(Status::with_metadata(
        code,
        message,
        MetadataMap::from_headers(headers.clone()),
    )))
}

fn percent_decode(raw: &[u8]) -> String {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' && i + 2 < raw.len() {
            let hex = std::str::from_utf8(&raw[i + 1..i + 3]).ok();
            if let Some(byte) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(raw[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The gRPC code tonic gives an HTTP status other than 200.
fn http_status(status: StatusCode) -> Status {
    let code = match status.as_u16() {
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502 | 503 | 504 => Code::Unavailable,
        _ => Code::Unknown,
    };
    Status::new(code, format!("5.x proxy answered HTTP {status}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::fake::{start_fake, start_relay, Fake, Script};
    use crate::grpc::pb;

    const SEND: &str = "/apache.rocketmq.v2.MessagingService/SendMessage";

    fn send_request(id: &str) -> tonic::Request<pb::SendMessageRequest> {
        let mut request = tonic::Request::new(pb::SendMessageRequest {
            messages: vec![pb::Message {
                topic: Some(pb::Resource {
                    name: "t".into(),
                    ..Default::default()
                }),
                system_properties: Some(pb::SystemProperties {
                    message_id: id.into(),
                    ..Default::default()
                }),
                body: Bytes::from_static(b"hello"),
                ..Default::default()
            }],
        });
        request
            .metadata_mut()
            .insert("x-mq-client-id", "direct-test".parse().unwrap());
        request
    }

    /// One SendMessage that must succeed and be answered for `id`.
    async fn assert_sent(direct: &DirectChannel, id: &str) {
        let response: tonic::Response<pb::SendMessageResponse> = direct
            .unary(SEND, send_request(id), Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(response.get_ref().entries[0].message_id, id);
    }

    async fn channel_to(fake: &Fake) -> DirectChannel {
        let addr = start_fake(fake.clone()).await;
        DirectChannel::new(&addr.to_string(), Duration::from_secs(2), 1 << 20).unwrap()
    }

    #[tokio::test]
    async fn a_call_carries_its_metadata_and_reads_the_answer() {
        let fake = Fake::default();
        let direct = channel_to(&fake).await;
        for id in ["m1", "m2", "m3"] {
            assert_sent(&direct, id).await;
        }
        let st = fake.st();
        assert_eq!(st.acked, ["m1", "m2", "m3"]);
        let (call, metadata) = &st.calls[0];
        assert_eq!(*call, "SendMessage");
        assert_eq!(
            crate::grpc::fake::header(metadata, "x-mq-client-id"),
            "direct-test"
        );
        // One connection carried all three calls.
        assert_eq!(direct.connections.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_grpc_error_comes_back_with_its_code() {
        let fake = Fake::default();
        fake.st()
            .script
            .push_back(Script::Grpc(Code::ResourceExhausted));
        let direct = channel_to(&fake).await;
        let error = direct
            .unary::<_, pb::SendMessageResponse>(SEND, send_request("m1"), Duration::from_secs(2))
            .await
            .unwrap_err();
        assert_eq!(error.code(), Code::ResourceExhausted);
        assert_eq!(error.message(), "scripted failure");
        // The connection stays usable.
        assert_sent(&direct, "m2").await;
    }

    #[tokio::test]
    async fn an_endpoint_nobody_listens_on_is_unavailable_and_is_retried_later() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let direct =
            DirectChannel::new(&addr.to_string(), Duration::from_secs(1), 1 << 20).unwrap();
        let error = direct
            .unary::<_, pb::SendMessageResponse>(SEND, send_request("m1"), Duration::from_secs(2))
            .await
            .unwrap_err();
        assert_eq!(error.code(), Code::Unavailable, "{error}");
        // The server comes up on that port: the next call connects.
        let fake = Fake::default();
        crate::grpc::fake::start_fake_on(fake.clone(), &addr.to_string()).await;
        assert_sent(&direct, "m2").await;
    }

    #[tokio::test]
    async fn a_server_that_does_not_answer_times_out() {
        let fake = Fake::default();
        fake.st().hold = Duration::from_secs(5);
        let direct = channel_to(&fake).await;
        let started = std::time::Instant::now();
        let error = direct
            .unary::<_, pb::SendMessageResponse>(
                SEND,
                send_request("m1"),
                Duration::from_millis(200),
            )
            .await
            .unwrap_err();
        assert_eq!(error.code(), Code::DeadlineExceeded);
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    /// A half-open connection (the peer vanished without a FIN or RST): the
    /// send whose deadline passes takes the connection down with it, so the
    /// next send connects anew instead of timing out on the dead one too.
    #[tokio::test]
    async fn a_deadline_drops_a_half_open_connection_and_the_next_send_reconnects() {
        let fake = Fake::default();
        let server = start_fake(fake.clone()).await;
        let relay = start_relay(server, false).await;
        let direct =
            DirectChannel::new(&relay.addr.to_string(), Duration::from_secs(2), 1 << 20).unwrap();
        let error = direct
            .unary::<_, pb::SendMessageResponse>(
                SEND,
                send_request("m1"),
                Duration::from_millis(300),
            )
            .await
            .unwrap_err();
        assert_eq!(error.code(), Code::DeadlineExceeded, "{error}");
        assert_eq!(relay.accepted(), 1);
        relay.forward(true);
        assert_sent(&direct, "m2").await;
        assert_eq!(relay.accepted(), 2, "the next send opened a new connection");
        assert_eq!(fake.st().acked, ["m2"]);
    }

    /// A connection that goes silent while idle is found dead by its PING
    /// and dropped before a send has to wait on it.
    #[tokio::test]
    async fn an_unanswered_ping_drops_a_silent_connection_before_a_send_needs_it() {
        let fake = Fake::default();
        let server = start_fake(fake.clone()).await;
        let relay = start_relay(server, true).await;
        let direct = DirectChannel::new(&relay.addr.to_string(), Duration::from_secs(2), 1 << 20)
            .unwrap()
            .with_keepalive(Keepalive {
                interval: Duration::from_millis(100),
                timeout: Duration::from_millis(200),
            });
        assert_sent(&direct, "m1").await;
        // Pings are answered: a healthy idle connection stays.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_sent(&direct, "m2").await;
        assert_eq!(relay.accepted(), 1);
        relay.silence();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        // A deadline shorter than any the dead connection could meet.
        let answer = direct
            .unary::<_, pb::SendMessageResponse>(
                SEND,
                send_request("m3"),
                Duration::from_millis(700),
            )
            .await;
        assert!(answer.is_ok(), "{answer:?}");
        assert_eq!(relay.accepted(), 2);
        assert_eq!(fake.st().acked, ["m1", "m2", "m3"]);
    }

    #[tokio::test]
    async fn new_sockets_get_tcp_keepalive() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        tune_socket(&tcp);
        let sock = socket2::SockRef::from(&tcp);
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), TCP_KEEPALIVE_TIME);
        assert!(tcp.nodelay().unwrap());
    }

    #[test]
    fn frames_round_trip() {
        let message = pb::Status {
            code: 20000,
            message: "ok".into(),
        };
        let frame = encode_frame(&message);
        assert_eq!(frame[0], 0);
        assert_eq!(
            u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize,
            frame.len() - FRAME_HEADER
        );
        let back: pb::Status = decode_frame(frame).unwrap();
        assert_eq!(back, message);
    }

    #[test]
    fn broken_frames_are_internal_errors() {
        assert_eq!(
            decode_frame::<pb::Status>(Bytes::from_static(b"\0\0"))
                .unwrap_err()
                .code(),
            Code::Internal
        );
        assert_eq!(
            decode_frame::<pb::Status>(Bytes::from_static(b"\0\0\0\0\x09abc"))
                .unwrap_err()
                .code(),
            Code::Internal
        );
        assert_eq!(
            decode_frame::<pb::Status>(Bytes::from_static(b"\x01\0\0\0\0"))
                .unwrap_err()
                .code(),
            Code::Internal
        );
    }

    #[test]
    fn grpc_status_and_message_are_read_from_headers() {
        let mut headers = HeaderMap::new();
        assert!(grpc_status(&headers).is_none());
        headers.insert("grpc-status", http::HeaderValue::from_static("0"));
        assert!(matches!(grpc_status(&headers), Some(Ok(()))));
        headers.insert("grpc-status", http::HeaderValue::from_static("14"));
        headers.insert(
            "grpc-message",
            http::HeaderValue::from_static("broker%20down%3A%20retry"),
        );
        let Some(Err(status)) = grpc_status(&headers) else {
            panic!("an error status");
        };
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(status.message(), "broker down: retry");
    }

    #[test]
    fn http_errors_map_like_tonic() {
        assert_eq!(
            http_status(StatusCode::SERVICE_UNAVAILABLE).code(),
            Code::Unavailable
        );
        assert_eq!(
            http_status(StatusCode::NOT_FOUND).code(),
            Code::Unimplemented
        );
        assert_eq!(http_status(StatusCode::IM_A_TEAPOT).code(), Code::Unknown);
    }
}
