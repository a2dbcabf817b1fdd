//! Error types of the Remoting layer, one enum per concern:
//! [`FrameError`] (the byte framing), [`DecodeError`] (headers, bodies and
//! message records) and [`RemotingError`] (everything a caller of
//! [`crate::remoting::RemotingClient`] can see). Display texts name the thing
//! that failed and, where there is one, the remedy.

use std::time::Duration;

use super::codes;

/// A frame could not be cut out of the read buffer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Not enough bytes buffered yet; read more and try again.
    #[error("incomplete frame: more bytes needed")]
    Incomplete,
    #[error("invalid frame: frame length {length} smaller than header word (4 bytes)")]
    LengthTooSmall { length: u32 },
    #[error(
        "invalid frame: max frame size exceeded ({length} bytes, limit {max}); \
         the peer is not speaking RocketMQ Remoting or sent an oversized reply"
    )]
    TooLarge { length: u64, max: usize },
    #[error("invalid frame: header length {header_len} exceeds frame (frame length {frame_len})")]
    HeaderTooLong { header_len: u32, frame_len: u32 },
    #[error("invalid frame: unknown header serialization type {0} (0 = JSON, 1 = ROCKETMQ)")]
    UnknownSerializeType(u8),
    #[error("invalid frame: {0}")]
    BadHeader(DecodeError),
    #[error("cannot encode frame: {0}")]
    Encode(String),
}

impl FrameError {
    pub fn is_incomplete(&self) -> bool {
        matches!(self, FrameError::Incomplete)
    }
}

/// Bytes from the network did not have the expected shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("truncated {what} at byte {offset}: needs {needed} bytes, {available} available")]
    Truncated {
        what: &'static str,
        offset: usize,
        needed: usize,
        available: usize,
    },
    #[error(
        "bad message magic code {found:#010x} at byte {offset} (expected 0xdaa320a7 or 0xdaa320ab)"
    )]
    BadMagic { offset: usize, found: u32 },
    #[error("bad {what} {value} at byte {offset}")]
    BadLength {
        what: &'static str,
        offset: usize,
        value: i64,
    },
    #[error(
        "body CRC mismatch for message at queue offset {queue_offset} (commit log offset \
         {commit_log_offset}): stored {stored:#x}, computed {computed:#x}; the record is corrupt"
    )]
    BodyCrcMismatch {
        queue_offset: i64,
        commit_log_offset: i64,
        stored: u32,
        computed: u32,
    },
    #[error("cannot decompress body of message at queue offset {queue_offset}: {reason}")]
    Decompress { queue_offset: i64, reason: String },
    #[error(
        "message at queue offset {queue_offset} is compressed with type {type_bits} (sysFlag \
         bits 8-10), which no RocketMQ producer writes; the bridge inflates zlib (0 or 3), \
         LZ4 (1) and ZSTD (2)"
    )]
    UnsupportedCompression { queue_offset: i64, type_bits: i32 },
    #[error(
        "body of message at queue offset {queue_offset} ({compression}) inflates beyond \
         {limit} bytes, the largest the 5.x target accepts; inflating stopped there \
         (a larger max body size on the target lets it through)"
    )]
    BodyTooLarge {
        queue_offset: i64,
        compression: &'static str,
        limit: usize,
    },
    #[error("bad message properties: {reason}")]
    BadProperties { reason: String },
    #[error("invalid UTF-8 in {what}")]
    InvalidUtf8 { what: &'static str },
    #[error("invalid JSON in {what}: {reason}")]
    InvalidJson { what: &'static str, reason: String },
    #[error("response header field `{field}` is missing")]
    MissingField { field: &'static str },
    #[error("header field `{field}` = {value:?} is not a valid {expected}")]
    BadField {
        field: String,
        value: String,
        expected: &'static str,
    },
}

/// Everything that can go wrong talking to a name server or broker.
#[derive(Debug, thiserror::Error)]
pub enum RemotingError {
    #[error("invalid address `{addr}`: {reason} (expected host:port)")]
    InvalidAddress { addr: String, reason: String },
    #[error("cannot connect to {addr}: {source}; check that the broker / name server runs and is reachable")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to {addr} timed out after {after:?}; check the address and firewall")]
    ConnectTimeout { addr: String, after: Duration },
    #[error(
        "{addr} is backing off after failures (last: {last_error}); next attempt in {retry_in:?}"
    )]
    Backoff {
        addr: String,
        retry_in: Duration,
        last_error: String,
    },
    #[error("{} request to {addr} timed out after {after:?}", codes::request_name(*code))]
    Timeout {
        addr: String,
        code: i32,
        after: Duration,
    },
    #[error("connection to {addr} closed: {reason}")]
    ConnectionClosed { addr: String, reason: String },
    #[error("protocol error on connection to {addr}: {source}")]
    Frame {
        addr: String,
        #[source]
        source: FrameError,
    },
    #[error(
        "{addr} answered {} ({code}): {}; {}",
        codes::response_name(*code),
        remark.as_deref().unwrap_or("no remark"),
        codes::response_remedy(*code)
    )]
    Broker {
        addr: String,
        code: i32,
        remark: Option<String>,
    },
    #[error("cannot decode answer: {0}")]
    Decode(#[from] DecodeError),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("no name server answered for topic `{topic}`: {errors}")]
    AllNameServersFailed { topic: String, errors: String },
}

impl RemotingError {
    /// The broker's response code, when the error is a broker answer.
    pub fn response_code(&self) -> Option<i32> {
        match self {
            RemotingError::Broker { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// True for failures of the transport (connect, timeout, closed, backoff),
    /// where trying again later or on another address can succeed.
    pub fn is_connection_error(&self) -> bool {
        matches!(
            self,
            RemotingError::Connect { .. }
                | RemotingError::ConnectTimeout { .. }
                | RemotingError::Backoff { .. }
                | RemotingError::Timeout { .. }
                | RemotingError::ConnectionClosed { .. }
                | RemotingError::Frame { .. }
        )
    }
}

pub type Result<T, E = RemotingError> = std::result::Result<T, E>;
