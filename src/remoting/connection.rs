//! One multiplexed TCP connection to a name server or broker.
//!
//! A writer task owns the write half and sends encoded frames in order; a
//! reader task owns the read half and the read buffer, cuts frames and
//! routes responses to their waiting request by `opaque`. Requests the
//! server initiates (NOTIFY_CONSUMER_IDS_CHANGED, GET_CONSUMER_RUNNING_INFO,
//! ...) are logged, published to subscribers and, unless oneway, answered so
//! the broker is never left waiting. When the connection dies every pending
//! request fails at once with [`RemotingError::ConnectionClosed`].
//!
//! Knows nothing of request semantics; see `client.rs` and `cmd/`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI32, Ordering};
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
        let _ = stream.set_nodelay(true);
        Ok(Self::from_stream(addr, stream, server_requests))
    }

    /// Wraps an established stream (used by `connect` and by tests).
    pub fn from_stream(
        addr: &str,
        stream: TcpStream,
        server_requests: Option<broadcast::Sender<ServerRequest>>,
    ) -> Connection {
        let (rd, wr) = stream.into_split();
        let (stop, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            addr: addr.to_string(),
            pending: Mutex::new(Some(HashMap::new())),
            close_reason: Mutex::new(None),
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
            Err(_) => Err(RemotingError::Timeout {
                addr: self.shared.addr.clone(),
                code: cmd.code,
                after: timeout,
            }),
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
            Err(_) => Err(RemotingError::Timeout {
                addr: self.shared.addr.clone(),
                code: cmd.code,
                after: timeout,
            }),
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
