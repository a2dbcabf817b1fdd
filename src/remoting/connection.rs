//! One multiplexed TCP connection to a name server or broker.
//!
//! A writer task owns the write half and sends encoded frames in order; a
//! reader task owns the read half and the read buffer, cuts frames and
//! routes responses to their waiting request by `opaque`. Requests the
//! server initiates (NOTIFY_CONSUMER_IDS_CHANGED, GET_CONSUMER_RUNNING_INFO,
//! ...) are logged, published to subscribers and, unless oneway, answered so
//! the broker is never left waiting. When the connection dies every pending
//! request fails at once with [`RemotingError::ConnectionClosed`], also if
//! one of the tasks panics.
//!
//! Dead peers are noticed even when idle: TCP keepalive probes after
//! [`KEEPALIVE_IDLE`] (then every [`KEEPALIVE_INTERVAL`], giving up after
//! [`KEEPALIVE_PROBES`]). A request that times out marks the connection
//! suspect ([`Connection::is_suspect`]): the client then opens a fresh one
//! for later requests instead of waiting out the timeout again on a peer
//! that has stopped answering (a blackholed master), as Java's client
//! closes a channel on which a request timed out.
//!
//! Knows nothing of request semantics; see `client.rs` and `cmd/`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use super::codes::{self, request, response};
use super::error::{FrameError, RemotingError, Result};
use super::frame::{self, MAX_FRAME_LEN};
use super::header::{RemotingCommand, SerializeType};

/// Idle time before the first TCP keepalive probe.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
/// Time between unanswered keepalive probes.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// Unanswered probes after which the kernel drops the connection.
pub const KEEPALIVE_PROBES: u32 = 3;

/// Disables Nagle and turns on TCP keepalive, so a peer that vanished
/// without a FIN or RST (host down, blackholed by a firewall) fails the
/// connection within about `KEEPALIVE_IDLE + KEEPALIVE_PROBES *
/// KEEPALIVE_INTERVAL` (25 s) instead of the kernel's two hours. On Linux
/// the same bound (TCP_USER_TIMEOUT) applies to sent data left unacknowledged,
/// which keepalive does not cover.
fn configure_socket(stream: &TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let sock = socket2::SockRef::from(stream);
    let keepalive = socket2::TcpKeepalive::new().with_time(KEEPALIVE_IDLE);
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
    let keepalive = keepalive
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_PROBES);
    sock.set_tcp_keepalive(&keepalive)?;
    #[cfg(any(target_os = "linux", target_os = "android"))]
    sock.set_tcp_user_timeout(Some(KEEPALIVE_IDLE + KEEPALIVE_INTERVAL * KEEPALIVE_PROBES))?;
    Ok(())
}

/// A request the server sent to us, as published to subscribers.
#[derive(Debug, Clone)]
pub struct ServerRequest {
    /// Address of the connection it arrived on.
    pub addr: String,
    pub command: RemotingCommand,
}

type Waiter = oneshot::Sender<Result<RemotingCommand>>;

/// State shared by the handle and both tasks.
struct Shared {
    addr: String,
    /// `None` once the connection is closed; then nothing can be added.
    pending: Mutex<Option<HashMap<i32, Waiter>>>,
    close_reason: Mutex<Option<String>>,
    /// Set when a request timed out: the peer may have stopped answering.
    suspect: AtomicBool,
    stop: watch::Sender<bool>,
}

impl Shared {
    fn pending(&self) -> std::sync::MutexGuard<'_, Option<HashMap<i32, Waiter>>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn closed_error(&self) -> RemotingError {
        let reason = self
            .close_reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_else(|| "closed".to_string());
        RemotingError::ConnectionClosed {
            addr: self.addr.clone(),
            reason,
        }
    }

    /// Closes the connection once: stops both tasks and fails every pending
    /// request with `reason`.
    fn close(&self, reason: &str) {
        let drained = {
            let mut pending = self.pending();
            let Some(map) = pending.take() else {
                return;
            };
            *self.close_reason.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason.to_string());
            map
        };
        if drained.is_empty() {
            tracing::debug!(addr = %self.addr, reason, "connection closed");
        } else {
            tracing::warn!(addr = %self.addr, reason, failed = drained.len(), "connection closed with requests in flight");
        }
        self.stop.send_replace(true);
        for (_, waiter) in drained {
            let _ = waiter.send(Err(RemotingError::ConnectionClosed {
                addr: self.addr.clone(),
                reason: reason.to_string(),
            }));
        }
    }

    fn complete(&self, response: RemotingCommand) {
        let waiter = self
            .pending()
            .as_mut()
            .and_then(|m| m.remove(&response.opaque));
        match waiter {
            Some(w) => {
                let _ = w.send(Ok(response));
            }
            None => tracing::debug!(
                addr = %self.addr,
                opaque = response.opaque,
                code = response.code,
                "response for no pending request (timed out or cancelled)"
            ),
        }
    }
}

/// Closes the connection if the task holding it unwinds from a panic, so
/// pending requests fail at once instead of waiting out their timeout.
struct CloseOnPanic<'a>(&'a Shared, &'static str);

impl Drop for CloseOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.close(self.1);
        }
    }
}

/// Removes a pending entry when the request future ends for any reason
/// (answered, timed out or cancelled by the caller).
struct PendingGuard<'a> {
    shared: &'a Shared,
    opaque: i32,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        if let Some(m) = self.shared.pending().as_mut() {
            m.remove(&self.opaque);
        }
    }
}

/// Handle to one connection. Dropping it closes the connection.
pub struct Connection {
    shared: Arc<Shared>,
    outbound: mpsc::Sender<Bytes>,
    next_opaque: AtomicI32,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("addr", &self.shared.addr)
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl Connection {
    /// Connects to `addr` (host:port) within `connect_timeout` and starts the
    /// reader and writer tasks. Server-initiated requests are published on
    /// `server_requests` when given.
    pub async fn connect(
        addr: &str,
        connect_timeout: Duration,
        server_requests: Option<broadcast::Sender<ServerRequest>>,
    ) -> Result<Connection> {
        let stream = match tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => {
                return Err(RemotingError::Connect {
                    addr: addr.to_string(),
                    source,
                })
            }
            Err(_) => {
                return Err(RemotingError::ConnectTimeout {
                    addr: addr.to_string(),
                    after: connect_timeout,
                })
            }
        };
        Ok(Self::from_stream(addr, stream, server_requests))
    }

    /// Wraps an established stream (used by `connect` and by tests) and
    /// sets its socket options (no delay, keepalive).
    pub fn from_stream(
        addr: &str,
        stream: TcpStream,
        server_requests: Option<broadcast::Sender<ServerRequest>>,
    ) -> Connection {
        if let Err(e) = configure_socket(&stream) {
            tracing::warn!(addr, error = %e, "cannot set TCP keepalive / nodelay; a dead peer may go unnoticed longer");
        }
        let (rd, wr) = stream.into_split();
        let (stop, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            addr: addr.to_string(),
            pending: Mutex::new(Some(HashMap::new())),
            close_reason: Mutex::new(None),
            suspect: AtomicBool::new(false),
            stop,
        });
        let (outbound, rx) = mpsc::channel::<Bytes>(1024);
        tokio::spawn(write_loop(wr, rx, shared.clone()));
        tokio::spawn(read_loop(
            rd,
            shared.clone(),
            outbound.downgrade(),
            server_requests,
        ));
        Connection {
            shared,
            outbound,
            next_opaque: AtomicI32::new(1),
        }
    }

    pub fn addr(&self) -> &str {
        &self.shared.addr
    }

    pub fn is_closed(&self) -> bool {
        self.shared.pending().is_none()
    }

    /// True once a request or oneway send on this connection timed out: the
    /// peer may be gone without a FIN (blackholed), so new requests should
    /// use a fresh connection. Requests already in flight here continue.
    pub fn is_suspect(&self) -> bool {
        self.shared.suspect.load(Ordering::Relaxed)
    }

    fn mark_suspect(&self, code: i32, after: Duration) {
        if !self.shared.suspect.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                addr = %self.shared.addr,
                request = codes::request_name(code),
                ?after,
                "request timed out; new requests will use a fresh connection"
            );
        }
    }

    fn encode(&self, cmd: &RemotingCommand) -> Result<Bytes> {
        let mut buf = BytesMut::new();
        frame::encode(cmd, SerializeType::Json, &mut buf).map_err(|source| {
            RemotingError::Frame {
                addr: self.shared.addr.clone(),
                source,
            }
        })?;
        Ok(buf.freeze())
    }

    /// Sends `cmd` and waits for its response, at most `timeout` in all
    /// (queueing, writing and waiting). Any response code is returned as is.
    pub async fn request(
        &self,
        mut cmd: RemotingCommand,
        timeout: Duration,
    ) -> Result<RemotingCommand> {
        let opaque = self.next_opaque.fetch_add(1, Ordering::Relaxed);
        cmd.opaque = opaque;
        cmd.flag &= !super::header::FLAG_ONEWAY;
        let frame = self.encode(&cmd)?;
        // Only the code is needed from here on; a long poll may wait 15 s,
        // and an idle estate has thousands of them in flight.
        let code = cmd.code;
        drop(cmd);
        let (tx, rx) = oneshot::channel();
        match self.shared.pending().as_mut() {
            Some(m) => {
                m.insert(opaque, tx);
            }
            None => return Err(self.shared.closed_error()),
        }
        let _guard = PendingGuard {
            shared: &self.shared,
            opaque,
        };
        let exchange = async {
            if self.outbound.send(frame).await.is_err() {
                return Err(self.shared.closed_error());
            }
            match rx.await {
                Ok(result) => result,
                Err(_) => Err(self.shared.closed_error()),
            }
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => {
                self.mark_suspect(code, timeout);
                Err(RemotingError::Timeout {
                    addr: self.shared.addr.clone(),
                    code,
                    after: timeout,
                })
            }
        }
    }

    /// Sends `cmd` as oneway (no response expected), waiting at most
    /// `timeout` for room in the send queue.
    pub async fn oneway(&self, mut cmd: RemotingCommand, timeout: Duration) -> Result<()> {
        cmd.opaque = self.next_opaque.fetch_add(1, Ordering::Relaxed);
        cmd.mark_oneway();
        let frame = self.encode(&cmd)?;
        if self.is_closed() {
            return Err(self.shared.closed_error());
        }
        match tokio::time::timeout(timeout, self.outbound.send(frame)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(self.shared.closed_error()),
            Err(_) => {
                self.mark_suspect(cmd.code, timeout);
                Err(RemotingError::Timeout {
                    addr: self.shared.addr.clone(),
                    code: cmd.code,
                    after: timeout,
                })
            }
        }
    }

    /// Closes the connection now; pending requests fail.
    pub fn close(&self) {
        self.shared.close("closed by client");
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.shared.close("connection handle dropped");
    }
}

async fn write_loop(mut wr: OwnedWriteHalf, mut rx: mpsc::Receiver<Bytes>, shared: Arc<Shared>) {
    let _close_on_panic = CloseOnPanic(&shared, "connection writer task panicked");
    let mut stop = shared.stop.subscribe();
    let mut batch = BytesMut::new();
    loop {
        let first = tokio::select! {
            f = rx.recv() => f,
            _ = stop.wait_for(|s| *s) => None,
        };
        let Some(first) = first else { break };
        // Coalesce what is already queued into one write.
        batch.clear();
        batch.extend_from_slice(&first);
        while batch.len() < 256 * 1024 {
            match rx.try_recv() {
                Ok(more) => batch.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        if let Err(e) = wr.write_all(&batch).await {
            shared.close(&format!("write failed: {e}"));
            break;
        }
    }
    let _ = wr.shutdown().await;
}

async fn read_loop(
    mut rd: OwnedReadHalf,
    shared: Arc<Shared>,
    replies: mpsc::WeakSender<Bytes>,
    server_requests: Option<broadcast::Sender<ServerRequest>>,
) {
    let _close_on_panic = CloseOnPanic(&shared, "connection reader task panicked");
    let mut stop = shared.stop.subscribe();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let reason = 'outer: loop {
        loop {
            match frame::parse(&mut buf, MAX_FRAME_LEN) {
                Ok(cmd) if cmd.is_response() => shared.complete(cmd),
                Ok(cmd) => serve(&shared, cmd, &replies, server_requests.as_ref()),
                Err(FrameError::Incomplete) => break,
                Err(e) => break 'outer format!("protocol error: {e}"),
            }
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(64 * 1024);
        }
        tokio::select! {
            read = rd.read_buf(&mut buf) => match read {
                Ok(0) => break "closed by peer".to_string(),
                Ok(_) => {}
                Err(e) => break format!("read failed: {e}"),
            },
            _ = stop.wait_for(|s| *s) => break "closed".to_string(),
        }
    };
    shared.close(&reason);
}

/// Handles a request the server sent us.
fn serve(
    shared: &Shared,
    cmd: RemotingCommand,
    replies: &mpsc::WeakSender<Bytes>,
    server_requests: Option<&broadcast::Sender<ServerRequest>>,
) {
    tracing::debug!(
        addr = %shared.addr,
        code = cmd.code,
        request = codes::request_name(cmd.code),
        oneway = cmd.is_oneway(),
        "server-initiated request"
    );
    let oneway = cmd.is_oneway();
    let answer = if oneway {
        None
    } else {
        Some(match cmd.code {
            request::NOTIFY_CONSUMER_IDS_CHANGED => {
                RemotingCommand::response_to(&cmd, response::SUCCESS, None)
            }
            code => RemotingCommand::response_to(
                &cmd,
                response::REQUEST_CODE_NOT_SUPPORTED,
                Some(format!(
                    "rmq-bridge does not serve request code {code} ({})",
                    codes::request_name(code)
                )),
            ),
        })
    };
    if let Some(tx) = server_requests {
        let _ = tx.send(ServerRequest {
            addr: shared.addr.clone(),
            command: cmd,
        });
    }
    if let Some(answer) = answer {
        let mut frame = BytesMut::new();
        if frame::encode(&answer, SerializeType::Json, &mut frame).is_ok() {
            if let Some(tx) = replies.upgrade() {
                if tx.try_send(frame.freeze()).is_err() {
                    tracing::debug!(addr = %shared.addr, "send queue full; server request left unanswered");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sockets_get_keepalive_and_nodelay() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let stream = TcpStream::connect(addr).await.unwrap();
        let sock = socket2::SockRef::from(&stream);
        assert!(!sock.keepalive().unwrap());
        configure_socket(&stream).unwrap();
        assert!(stream.nodelay().unwrap());
        assert!(sock.keepalive().unwrap());
        #[cfg(target_os = "linux")]
        {
            assert_eq!(sock.tcp_keepalive_time().unwrap(), KEEPALIVE_IDLE);
            assert_eq!(sock.tcp_keepalive_interval().unwrap(), KEEPALIVE_INTERVAL);
            assert_eq!(sock.tcp_keepalive_retries().unwrap(), KEEPALIVE_PROBES);
            assert_eq!(
                sock.tcp_user_timeout().unwrap(),
                Some(Duration::from_secs(25))
            );
        }
    }

    #[tokio::test]
    async fn a_timed_out_request_marks_the_connection_suspect() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let conn = Connection::connect(&addr, Duration::from_secs(1), None)
            .await
            .unwrap();
        let (_silent, _) = l.accept().await.unwrap();
        assert!(!conn.is_suspect());
        let err = conn
            .request(RemotingCommand::request(30), Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(matches!(err, RemotingError::Timeout { .. }), "{err}");
        assert!(conn.is_suspect());
        assert!(!conn.is_closed(), "requests in flight elsewhere continue");
    }
}
