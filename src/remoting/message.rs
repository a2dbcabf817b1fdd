//! 4.x message records as a broker returns them in a PULL body (Java's
//! `MessageDecoder` layout), decoded into [`MessageRecord`]s:
//!
//! ```text
//! totalSize i32 | magic i32 | bodyCRC i32 | queueId i32 | flag i32 | queueOffset i64
//! | physicalOffset i64 | sysFlag i32 | bornTimestamp i64 | bornHost (4|16 + 4)
//! | storeTimestamp i64 | storeHost (4|16 + 4) | reconsumeTimes i32
//! | preparedTransactionOffset i64 | bodyLength i32 | body | topicLength (u8 V1 | u16 V2)
//! | topic | propertiesLength u16 | properties
//! ```
//!
//! Also the encoders for one record (tests, fakes) and for the entries of a
//! batch send (`MessageDecoder.encodeMessages`). Pure functions over `Bytes`;
//! bodies that are not compressed share the pulled buffer.

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::{BufMut, Bytes, BytesMut};

use super::error::{DecodeError, RemotingError};
use super::properties::{names, Properties};

/// `MessageDecoder.MESSAGE_MAGIC_CODE` (-626843481): 1-byte topic length.
pub const MAGIC_V1: u32 = 0xDAA3_20A7;
/// `MessageDecoder.MESSAGE_MAGIC_CODE_V2` (-626843477): 2-byte topic length.
pub const MAGIC_V2: u32 = 0xDAA3_20AB;

/// Bits of a record's `sysFlag` (`MessageSysFlag`).
pub mod sys_flag {
    pub const COMPRESSED: i32 = 0x1;
    pub const MULTI_TAGS: i32 = 0x1 << 1;
    pub const TRANSACTION_NOT_TYPE: i32 = 0;
    pub const TRANSACTION_PREPARED_TYPE: i32 = 0x1 << 2;
    pub const TRANSACTION_COMMIT_TYPE: i32 = 0x2 << 2;
    pub const TRANSACTION_ROLLBACK_TYPE: i32 = 0x3 << 2;
    pub const BORNHOST_V6: i32 = 0x1 << 4;
    pub const STOREHOST_V6: i32 = 0x1 << 5;
    pub const NEED_UNWRAP: i32 = 0x1 << 6;
    pub const INNER_BATCH: i32 = 0x1 << 7;
    pub const COMPRESSION_LZ4_TYPE: i32 = 0x1 << 8;
    pub const COMPRESSION_ZSTD_TYPE: i32 = 0x2 << 8;
    pub const COMPRESSION_ZLIB_TYPE: i32 = 0x3 << 8;
    pub const COMPRESSION_TYPE_MASK: i32 = 0x7 << 8;
}

/// How far a compressed body is inflated where no 5.x target announced
/// its limit: the 5.x default `max_body_size` (4 MiB). The pull path uses
/// the target's own limit; inflating stops at the first byte beyond it.
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Transaction state bits of `sysFlag` (bits 2..3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionType {
    NotTransaction,
    Prepared,
    Commit,
    Rollback,
}

/// One 4.x message as stored by the broker, body decompressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRecord {
    pub topic: String,
    pub queue_id: i32,
    pub queue_offset: i64,
    pub commit_log_offset: i64,
    /// As stored, except that `COMPRESSED` is cleared once the body is
    /// inflated (as Java's decoder does).
    pub sys_flag: i32,
    pub flag: i32,
    pub body_crc: u32,
    pub born_timestamp_ms: i64,
    pub born_host: SocketAddr,
    pub store_timestamp_ms: i64,
    pub store_host: SocketAddr,
    pub reconsume_times: i32,
    pub prepared_transaction_offset: i64,
    /// Always decompressed.
    pub body: Bytes,
    pub properties: Properties,
    /// 32 upper-case hex digits (56 for an IPv6 store host): store host
    /// address, port and commit log offset (Java's `createMessageId`).
    pub offset_msg_id: String,
}

impl MessageRecord {
    /// `TAGS`.
    pub fn tag(&self) -> Option<&str> {
        self.properties.get(names::TAGS)
    }

    /// `KEYS` split on spaces, empty entries dropped.
    pub fn keys(&self) -> Vec<&str> {
        self.properties
            .get(names::KEYS)
            .map(|k| k.split(' ').filter(|s| !s.is_empty()).collect())
            .unwrap_or_default()
    }

    /// `UNIQ_KEY`, the client-side message id.
    pub fn uniq_key(&self) -> Option<&str> {
        self.properties.get(names::UNIQ_KEY)
    }

    /// The id a Java consumer sees: `UNIQ_KEY`, else the offset message id.
    pub fn message_id(&self) -> &str {
        self.uniq_key().unwrap_or(&self.offset_msg_id)
    }

    pub fn transaction_type(&self) -> TransactionType {
        match self.sys_flag & sys_flag::TRANSACTION_ROLLBACK_TYPE {
            sys_flag::TRANSACTION_PREPARED_TYPE => TransactionType::Prepared,
            sys_flag::TRANSACTION_COMMIT_TYPE => TransactionType::Commit,
            sys_flag::TRANSACTION_ROLLBACK_TYPE => TransactionType::Rollback,
            _ => TransactionType::NotTransaction,
        }
    }
}

/// Java's `createMessageId`: address bytes, port (4 bytes), commit log
/// offset (8 bytes), as upper-case hex.
pub fn offset_msg_id(store_ip: IpAddr, port: i32, commit_log_offset: i64) -> String {
    // Every decoded record gets one: hex straight into the string.
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(56);
    let mut put = |bytes: &[u8]| {
        for b in bytes {
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xF)]));
        }
    };
    match store_ip {
        IpAddr::V4(ip) => put(&ip.octets()),
        IpAddr::V6(ip) => put(&ip.octets()),
    }
    put(&port.to_be_bytes());
    put(&commit_log_offset.to_be_bytes());
    out
}

/// Bounds-checked reader over `buf[pos..end]`, reporting absolute offsets.
struct Cursor<'a> {
    buf: &'a Bytes,
    pos: usize,
    end: usize,
}

impl<'a> Cursor<'a> {
    fn need(&self, n: usize, what: &'static str) -> Result<(), DecodeError> {
        let available = self.end.saturating_sub(self.pos);
        if n > available {
            return Err(DecodeError::Truncated {
                what,
                offset: self.pos,
                needed: n,
                available,
            });
        }
        Ok(())
    }
    fn slice(&mut self, n: usize, what: &'static str) -> Result<Bytes, DecodeError> {
        self.need(n, what)?;
        let s = self.buf.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(s)
    }
    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        self.need(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(&self.buf[self.pos..self.pos + N]);
        self.pos += N;
        Ok(a)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(what)?[0])
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }
    fn i32(&mut self, what: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array(what)?))
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }
    fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array(what)?))
    }
    fn length(&mut self, what: &'static str) -> Result<usize, DecodeError> {
        let at = self.pos;
        let v = self.i32(what)?;
        usize::try_from(v).map_err(|_| DecodeError::BadLength {
            what,
            offset: at,
            value: i64::from(v),
        })
    }
    /// IPv4 or IPv6 address plus 4-byte port; returns the raw port too.
    fn host(&mut self, v6: bool, what: &'static str) -> Result<(SocketAddr, i32), DecodeError> {
        let ip = if v6 {
            IpAddr::V6(Ipv6Addr::from(self.array::<16>(what)?))
        } else {
            IpAddr::V4(Ipv4Addr::from(self.array::<4>(what)?))
        };
        let port = self.i32(what)?;
        // Java would reject a port outside 0..=65535; keep the record readable.
        Ok((SocketAddr::new(ip, u16::try_from(port).unwrap_or(0)), port))
    }
}

/// A stored record that could not be decoded (CRC mismatch, a body that
/// cannot be inflated or inflates beyond the limit, an unknown compression):
/// kept with its raw bytes so the pipeline can quarantine it and move on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UndecodableRecord {
    /// The record's queue offset as read from its header.
    pub queue_offset: i64,
    /// The stored record bytes exactly as the broker served them.
    pub raw: Bytes,
    /// Why it could not be decoded, for the quarantine entry and the log.
    pub reason: String,
}

/// What [`decode_pull_body`] made of a PULL body: the records it decoded,
/// the stored records it could frame but not decode, and where the body
/// stopped being walkable, if it did.
#[derive(Debug, Default)]
pub struct DecodedRecords {
    /// Decoded records in body order, inner batches unwrapped.
    pub records: Vec<MessageRecord>,
    /// Records whose frame was sound but whose body was not (CRC mismatch,
    /// a body that cannot be inflated or inflates beyond the limit, an
    /// unknown compression, a broken inner batch), in body order.
    pub undecodable: Vec<UndecodableRecord>,
    /// Set when a record's frame (total size, magic code) is broken: nothing
    /// from there to the end of the body can be walked.
    pub broken: Option<BrokenFrame>,
}

/// The place where a PULL body stops being walkable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenFrame {
    /// Byte position of the broken record in the body.
    pub at: usize,
    /// The queue offset in the broken record's header, when the body holds
    /// enough bytes to read it (it may be as broken as the frame).
    pub queue_offset: Option<i64>,
    /// The body from `at` to its end.
    pub raw: Bytes,
    pub error: DecodeError,
}

/// Byte position of `queueOffset` in a stored record, and where it ends:
/// the shortest frame the decoder can report an undecodable record for.
const QUEUE_OFFSET_AT: usize = 20;
const MIN_FRAME: usize = QUEUE_OFFSET_AT + 8;

/// Decodes a PULL body record by record, inflating at most `max_body_bytes`
/// of any compressed body and unwrapping inner batches (`INNER_BATCH` +
/// `NEED_UNWRAP`) the way Java's `PullAPIWrapper` does. A record that
/// cannot be decoded is kept raw with its reason, and decoding goes on with
/// the next one, so one bad record never fails the records around it.
pub fn decode_pull_body(buf: &Bytes, max_body_bytes: usize) -> DecodedRecords {
    let mut out = DecodedRecords::default();
    let mut at = 0;
    while at < buf.len() {
        let (end, queue_offset) = match read_frame(buf, at) {
            Ok(frame) => frame,
            Err(error) => {
                out.broken = Some(BrokenFrame {
                    at,
                    queue_offset: peek_i64(buf, at + QUEUE_OFFSET_AT),
                    raw: buf.slice(at..),
                    error,
                });
                break;
            }
        };
        match decode_framed(buf, at, end, max_body_bytes) {
            Ok(records) => out.records.extend(records),
            Err(e) => out.undecodable.push(UndecodableRecord {
                queue_offset,
                raw: buf.slice(at..end),
                reason: e.to_string(),
            }),
        }
        at = end;
    }
    out
}

/// Decodes every record of a body or fails with the first error: for
/// callers that need all or nothing (tests, fakes, benchmarks). Bodies
/// inflate up to [`DEFAULT_MAX_BODY_BYTES`]. The pull path uses
/// [`decode_pull_body`].
pub fn decode_records(buf: &Bytes) -> Result<Vec<MessageRecord>, DecodeError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let (end, _) = read_frame(buf, at)?;
        out.extend(decode_framed(buf, at, end, DEFAULT_MAX_BODY_BYTES)?);
        at = end;
    }
    Ok(out)
}

/// The `TAGS` property of one stored record (`raw` as in an
/// [`UndecodableRecord`]), read without checking or inflating its body.
pub fn stored_tag(raw: &Bytes) -> Option<String> {
    let (end, _) = read_frame(raw, 0).ok()?;
    let stored = parse_stored(raw, 0, end).ok()?;
    Properties::decode(&String::from_utf8_lossy(&stored.properties))
        .get(names::TAGS)
        .map(str::to_string)
}

fn peek_i64(buf: &Bytes, at: usize) -> Option<i64> {
    let bytes = buf.get(at..at.checked_add(8)?)?;
    Some(i64::from_be_bytes(bytes.try_into().ok()?))
}

/// Checks the frame of the record at `at` (total size within the body and
/// long enough for a header, magic code); returns where the record ends and
/// its queue offset.
fn read_frame(buf: &Bytes, at: usize) -> Result<(usize, i64), DecodeError> {
    let mut head = Cursor {
        buf,
        pos: at,
        end: buf.len(),
    };
    let total = head.length("record total size")?;
    if total < MIN_FRAME {
        return Err(DecodeError::BadLength {
            what: "record total size",
            offset: at,
            value: total as i64,
        });
    }
    let available = buf.len().saturating_sub(at);
    if total > available {
        return Err(DecodeError::Truncated {
            what: "record",
            offset: at,
            needed: total,
            available,
        });
    }
    let magic_at = head.pos;
    let magic = head.u32("record magic code")?;
    if magic != MAGIC_V1 && magic != MAGIC_V2 {
        return Err(DecodeError::BadMagic {
            offset: magic_at,
            found: magic,
        });
    }
    let queue_offset = peek_i64(buf, at + QUEUE_OFFSET_AT).ok_or(DecodeError::Truncated {
        what: "record queue offset",
        offset: at + QUEUE_OFFSET_AT,
        needed: 8,
        available: total.saturating_sub(QUEUE_OFFSET_AT),
    })?;
    Ok((at + total, queue_offset))
}

/// A stored record's fields, body as stored (not checked, not inflated).
struct StoredRecord {
    body_crc: u32,
    queue_id: i32,
    flag: i32,
    queue_offset: i64,
    commit_log_offset: i64,
    sys_flag: i32,
    born_timestamp_ms: i64,
    born_host: SocketAddr,
    store_timestamp_ms: i64,
    store_host: SocketAddr,
    store_port: i32,
    reconsume_times: i32,
    prepared_transaction_offset: i64,
    body: Bytes,
    topic: Bytes,
    properties: Bytes,
}

/// Reads the fields of the framed record `buf[at..end]`.
fn parse_stored(buf: &Bytes, at: usize, end: usize) -> Result<StoredRecord, DecodeError> {
    let mut c = Cursor {
        buf,
        pos: at + 4,
        end,
    };
    let magic_v2 = c.u32("record magic code")? == MAGIC_V2;
    let body_crc = c.u32("record body CRC")?;
    let queue_id = c.i32("record queue id")?;
    let flag = c.i32("record flag")?;
    let queue_offset = c.i64("record queue offset")?;
    let commit_log_offset = c.i64("record physical offset")?;
    let sys_flag = c.i32("record sysFlag")?;
    let born_timestamp_ms = c.i64("record born timestamp")?;
    let (born_host, _) = c.host(sys_flag & sys_flag::BORNHOST_V6 != 0, "record born host")?;
    let store_timestamp_ms = c.i64("record store timestamp")?;
    let (store_host, store_port) =
        c.host(sys_flag & sys_flag::STOREHOST_V6 != 0, "record store host")?;
    let reconsume_times = c.i32("record reconsume times")?;
    let prepared_transaction_offset = c.i64("record prepared transaction offset")?;
    let body_len = c.length("record body length")?;
    let body = c.slice(body_len, "record body")?;
    let topic_len = if magic_v2 {
        usize::from(c.u16("record topic length")?)
    } else {
        usize::from(c.u8("record topic length")?)
    };
    let topic = c.slice(topic_len, "record topic")?;
    let props_len = usize::from(c.u16("record properties length")?);
    let properties = c.slice(props_len, "record properties")?;
    Ok(StoredRecord {
        body_crc,
        queue_id,
        flag,
        queue_offset,
        commit_log_offset,
        sys_flag,
        born_timestamp_ms,
        born_host,
        store_timestamp_ms,
        store_host,
        store_port,
        reconsume_times,
        prepared_transaction_offset,
        body,
        topic,
        properties,
    })
}

/// Decodes the framed record `buf[at..end]` and unwraps an inner batch
/// into its messages.
fn decode_framed(
    buf: &Bytes,
    at: usize,
    end: usize,
    max_body_bytes: usize,
) -> Result<Vec<MessageRecord>, DecodeError> {
    let record = decode_stored(buf, at, end, max_body_bytes)?;
    let unwrap = sys_flag::INNER_BATCH | sys_flag::NEED_UNWRAP;
    if record.sys_flag & unwrap == unwrap {
        unwrap_inner_batch(&record)
    } else {
        Ok(vec![record])
    }
}

/// Decodes the record starting at byte `at` as stored (an inner batch stays
/// one record); returns it and where the next one starts. Bodies inflate up
/// to [`DEFAULT_MAX_BODY_BYTES`].
pub fn decode_record(buf: &Bytes, at: usize) -> Result<(MessageRecord, usize), DecodeError> {
    let (end, _) = read_frame(buf, at)?;
    Ok((decode_stored(buf, at, end, DEFAULT_MAX_BODY_BYTES)?, end))
}

/// Decodes the framed record `buf[at..end]`: checks the body CRC when it is
/// non-zero and inflates a compressed body up to `max_body_bytes`.
fn decode_stored(
    buf: &Bytes,
    at: usize,
    end: usize,
    max_body_bytes: usize,
) -> Result<MessageRecord, DecodeError> {
    let s = parse_stored(buf, at, end)?;
    if s.body_crc != 0 && !s.body.is_empty() {
        let computed = crc32fast::hash(&s.body);
        // Java stores `crc32 & 0x7FFFFFFF` (UtilAll.crc32); accept the full
        // value too, in case a writer does not mask.
        if s.body_crc != computed & 0x7FFF_FFFF && s.body_crc != computed {
            return Err(DecodeError::BodyCrcMismatch {
                queue_offset: s.queue_offset,
                commit_log_offset: s.commit_log_offset,
                stored: s.body_crc,
                computed: computed & 0x7FFF_FFFF,
            });
        }
    }
    let mut sys = s.sys_flag;
    let body = if sys & sys_flag::COMPRESSED != 0 {
        let inflated = decompress(&s.body, sys, s.queue_offset, max_body_bytes)?;
        sys &= !sys_flag::COMPRESSED;
        inflated
    } else {
        s.body
    };
    Ok(MessageRecord {
        topic: String::from_utf8_lossy(&s.topic).into_owned(),
        queue_id: s.queue_id,
        queue_offset: s.queue_offset,
        commit_log_offset: s.commit_log_offset,
        sys_flag: sys,
        flag: s.flag,
        body_crc: s.body_crc,
        born_timestamp_ms: s.born_timestamp_ms,
        born_host: s.born_host,
        store_timestamp_ms: s.store_timestamp_ms,
        store_host: s.store_host,
        reconsume_times: s.reconsume_times,
        prepared_transaction_offset: s.prepared_transaction_offset,
        body,
        properties: Properties::decode(&String::from_utf8_lossy(&s.properties)),
        offset_msg_id: offset_msg_id(s.store_host.ip(), s.store_port, s.commit_log_offset),
    })
}

/// A body compression, from bits 8-10 of the sysFlag (Java's
/// `CompressionType`: 1 LZ4, 2 ZSTD, 3 zlib; 0 is zlib too, as 4.x
/// producers set no type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Zlib,
    /// The LZ4 frame format (Java writes `LZ4FrameOutputStream`).
    Lz4,
    /// Zstandard frames (Java writes `ZstdOutputStream`).
    Zstd,
}

impl Compression {
    /// The compression a compressed record's sysFlag names; `Err` carries
    /// the type bits when they name none.
    pub fn of_sys_flag(sys: i32) -> Result<Compression, i32> {
        match (sys & sys_flag::COMPRESSION_TYPE_MASK) >> 8 {
            0 | 3 => Ok(Compression::Zlib),
            1 => Ok(Compression::Lz4),
            2 => Ok(Compression::Zstd),
            other => Err(other),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Compression::Zlib => "zlib",
            Compression::Lz4 => "LZ4",
            Compression::Zstd => "ZSTD",
        }
    }
}

fn decompress(
    stored: &[u8],
    sys: i32,
    queue_offset: i64,
    max_body_bytes: usize,
) -> Result<Bytes, DecodeError> {
    let kind =
        Compression::of_sys_flag(sys).map_err(|type_bits| DecodeError::UnsupportedCompression {
            queue_offset,
            type_bits,
        })?;
    let mut out = BoundedBody::new(stored.len(), max_body_bytes);
    let filled = match kind {
        Compression::Zlib => out.fill_from(&mut flate2::read::ZlibDecoder::new(stored)),
        Compression::Lz4 => out.fill_from(&mut lz4_flex::frame::FrameDecoder::new(stored)),
        Compression::Zstd => inflate_zstd(stored, &mut out),
    };
    match filled {
        Ok(()) => Ok(Bytes::from(out.body)),
        Err(Inflate::TooLarge) => Err(DecodeError::BodyTooLarge {
            queue_offset,
            compression: kind.name(),
            limit: max_body_bytes,
        }),
        Err(Inflate::Failed(e)) => Err(DecodeError::Decompress {
            queue_offset,
            reason: format!("{}: {e}", kind.name()),
        }),
    }
}

enum Inflate {
    /// The body would grow beyond the limit; inflating stopped there.
    TooLarge,
    Failed(std::io::Error),
}

/// An inflated body that never grows beyond its limit: reading stops at the
/// first byte past it, and no allocation is larger than the limit.
struct BoundedBody {
    body: Vec<u8>,
    limit: usize,
}

impl BoundedBody {
    fn new(stored_len: usize, limit: usize) -> Self {
        let guess = stored_len.saturating_mul(4).clamp(256, 1 << 20).min(limit);
        BoundedBody {
            body: Vec::with_capacity(guess),
            limit,
        }
    }

    fn fill_from(&mut self, reader: &mut impl Read) -> Result<(), Inflate> {
        let mut chunk = [0u8; 8 * 1024];
        loop {
            let n = match reader.read(&mut chunk) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Inflate::Failed(e)),
            };
            if n > self.limit - self.body.len() {
                return Err(Inflate::TooLarge);
            }
            let free = self.body.capacity() - self.body.len();
            if free < n {
                let target = self
                    .body
                    .capacity()
                    .saturating_mul(2)
                    .max(self.body.len() + n)
                    .min(self.limit);
                self.body.reserve_exact(target - self.body.len());
            }
            self.body.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Smallest zstd window a decoder should accept (RFC 8878 recommends 8 MiB);
/// a frame may declare up to this or the body limit, whichever is larger,
/// so a forged window size cannot make the decoder reserve more.
const ZSTD_MIN_WINDOW: u64 = 8 * 1024 * 1024;

/// Inflates one or more concatenated zstd frames (skippable frames are
/// skipped, as libzstd does).
fn inflate_zstd(stored: &[u8], out: &mut BoundedBody) -> Result<(), Inflate> {
    use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
    use ruzstd::decoding::{FrameDecoder, StreamingDecoder};
    let failed = |reason: String| Inflate::Failed(std::io::Error::other(reason));
    let max_window = u64::try_from(out.limit)
        .unwrap_or(u64::MAX)
        .max(ZSTD_MIN_WINDOW);
    let mut src = stored;
    if src.is_empty() {
        return Err(failed("empty body".into()));
    }
    while !src.is_empty() {
        let mut frame = FrameDecoder::new();
        frame.set_max_window_size(max_window);
        match StreamingDecoder::new_with_decoder(&mut src, frame) {
            Ok(mut decoder) => out.fill_from(&mut decoder)?,
            Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::SkipFrame {
                length,
                ..
            })) => {
                let length = usize::try_from(length).unwrap_or(usize::MAX);
                if length > src.len() {
                    return Err(failed(format!(
                        "skippable frame of {length} bytes, {} left in the body",
                        src.len()
                    )));
                }
                src = &src[length..];
            }
            Err(e) => return Err(failed(e.to_string())),
        }
    }
    Ok(())
}

/// Splits a record that wraps a client batch into its messages, as Java's
/// `MessageDecoder.decodeMessage(MessageExt, List)`: each inner message
/// takes the outer topic, queue, hosts, timestamps, sysFlag and commit log
/// offset, queue offset = outer + index, and its own flag, body and
/// properties. They share the outer `offset_msg_id`; Java batches give each
/// message its own `UNIQ_KEY`, which is their [`MessageRecord::message_id`].
pub fn unwrap_inner_batch(outer: &MessageRecord) -> Result<Vec<MessageRecord>, DecodeError> {
    let buf = &outer.body;
    let mut c = Cursor {
        buf,
        pos: 0,
        end: buf.len(),
    };
    let mut out = Vec::new();
    let mut index: i64 = 0;
    while c.pos < c.end {
        let _total = c.i32("batch entry total size")?;
        let _magic = c.i32("batch entry magic code")?;
        let body_crc = c.u32("batch entry body CRC")?;
        let flag = c.i32("batch entry flag")?;
        let body_len = c.length("batch entry body length")?;
        let body = c.slice(body_len, "batch entry body")?;
        let props_len = usize::from(c.u16("batch entry properties length")?);
        let props = c.slice(props_len, "batch entry properties")?;
        out.push(MessageRecord {
            queue_offset: outer.queue_offset.saturating_add(index),
            flag,
            body_crc,
            reconsume_times: 0,
            prepared_transaction_offset: 0,
            body,
            properties: Properties::decode(&String::from_utf8_lossy(&props)),
            ..outer.clone()
        });
        index += 1;
    }
    Ok(out)
}

/// Encodes `rec` as a stored record; `rec.body` and `rec.sys_flag` are
/// written as given (compress the body yourself to build a compressed
/// record) and `rec.body_crc` too. For tests and fakes.
pub fn encode_record(rec: &MessageRecord, magic_v2: bool) -> Result<Bytes, RemotingError> {
    let props = rec.properties.encode();
    let props_len = u16::try_from(props.len())
        .map_err(|_| RemotingError::InvalidRequest("properties exceed 65535 bytes".into()))?;
    let topic_len_size = if magic_v2 { 2 } else { 1 };
    if (!magic_v2 && rec.topic.len() > 255) || rec.topic.len() > 65535 {
        return Err(RemotingError::InvalidRequest(format!(
            "topic `{}` too long for this record version",
            rec.topic
        )));
    }
    let host_len = |a: &SocketAddr| if a.is_ipv6() { 16 + 4 } else { 4 + 4 };
    let total = 4
        + 4
        + 4
        + 4
        + 4
        + 8
        + 8
        + 4
        + 8
        + host_len(&rec.born_host)
        + 8
        + host_len(&rec.store_host)
        + 4
        + 8
        + 4
        + rec.body.len()
        + topic_len_size
        + rec.topic.len()
        + 2
        + props.len();
    let total_i32 = i32::try_from(total)
        .map_err(|_| RemotingError::InvalidRequest("record exceeds 2 GiB".into()))?;
    let body_len = i32::try_from(rec.body.len())
        .map_err(|_| RemotingError::InvalidRequest("body exceeds 2 GiB".into()))?;
    let mut b = BytesMut::with_capacity(total);
    b.put_i32(total_i32);
    b.put_u32(if magic_v2 { MAGIC_V2 } else { MAGIC_V1 });
    b.put_u32(rec.body_crc);
    b.put_i32(rec.queue_id);
    b.put_i32(rec.flag);
    b.put_i64(rec.queue_offset);
    b.put_i64(rec.commit_log_offset);
    let mut sys = rec.sys_flag & !(sys_flag::BORNHOST_V6 | sys_flag::STOREHOST_V6);
    if rec.born_host.is_ipv6() {
        sys |= sys_flag::BORNHOST_V6;
    }
    if rec.store_host.is_ipv6() {
        sys |= sys_flag::STOREHOST_V6;
    }
    b.put_i32(sys);
    b.put_i64(rec.born_timestamp_ms);
    put_host(&mut b, &rec.born_host);
    b.put_i64(rec.store_timestamp_ms);
    put_host(&mut b, &rec.store_host);
    b.put_i32(rec.reconsume_times);
    b.put_i64(rec.prepared_transaction_offset);
    b.put_i32(body_len);
    b.put_slice(&rec.body);
    if magic_v2 {
        b.put_u16(rec.topic.len() as u16);
    } else {
        b.put_u8(rec.topic.len() as u8);
    }
    b.put_slice(rec.topic.as_bytes());
    b.put_u16(props_len);
    b.put_slice(props.as_bytes());
    Ok(b.freeze())
}

fn put_host(b: &mut BytesMut, addr: &SocketAddr) {
    match addr.ip() {
        IpAddr::V4(ip) => b.put_slice(&ip.octets()),
        IpAddr::V6(ip) => b.put_slice(&ip.octets()),
    }
    b.put_i32(i32::from(addr.port()));
}

/// Appends one message of a batch send in `MessageDecoder.encodeMessage`
/// layout: totalSize, magic 0, bodyCRC 0, flag, body, properties.
pub fn encode_batch_entry(
    flag: i32,
    body: &[u8],
    properties: &Properties,
    dst: &mut BytesMut,
) -> Result<(), RemotingError> {
    let props = properties.encode();
    let props_len = i16::try_from(props.len()).map_err(|_| {
        RemotingError::InvalidRequest(format!(
            "message properties are {} bytes; a 4.x broker accepts at most 32767",
            props.len()
        ))
    })?;
    let total = 4 + 4 + 4 + 4 + 4 + body.len() + 2 + props.len();
    let total = i32::try_from(total)
        .map_err(|_| RemotingError::InvalidRequest("batch entry exceeds 2 GiB".into()))?;
    dst.reserve(total as usize);
    dst.put_i32(total);
    dst.put_i32(0);
    dst.put_i32(0);
    dst.put_i32(flag);
    dst.put_i32(body.len() as i32);
    dst.put_slice(body);
    dst.put_i16(props_len);
    dst.put_slice(props.as_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_msg_id_is_upper_hex_of_host_port_offset() {
        let ip: IpAddr = "127.0.0.1".parse().expect("ip");
        assert_eq!(
            offset_msg_id(ip, 10911, 0x1234),
            "7F00000100002A9F0000000000001234"
        );
        let v6: IpAddr = "::1".parse().expect("ip");
        assert_eq!(offset_msg_id(v6, 1, -1).len(), 56);
    }
    use flate2::write::ZlibEncoder;
    use proptest::prelude::*;
    use std::io::Write;

    pub(crate) fn java_crc(body: &[u8]) -> u32 {
        crc32fast::hash(body) & 0x7FFF_FFFF
    }

    fn sample(body: &'static [u8]) -> MessageRecord {
        let props: Properties = [
            ("TAGS", "tagA"),
            ("KEYS", "k1  k2"),
            ("UNIQ_KEY", "7F000001000118B4AAC2"),
            ("env", "gray"),
        ]
        .into_iter()
        .collect();
        MessageRecord {
            topic: "orders".into(),
            queue_id: 2,
            queue_offset: 41,
            commit_log_offset: 0x1234,
            sys_flag: 0,
            flag: 0,
            body_crc: java_crc(body),
            born_timestamp_ms: 1_700_000_000_000,
            born_host: "10.0.0.7:50000".parse().unwrap(),
            store_timestamp_ms: 1_700_000_000_005,
            store_host: "127.0.0.1:10911".parse().unwrap(),
            reconsume_times: 0,
            prepared_transaction_offset: 0,
            body: Bytes::from_static(body),
            properties: props,
            offset_msg_id: "7F00000100002A9F0000000000001234".into(),
        }
    }

    #[test]
    fn decodes_ipv4_record() {
        let rec = sample(b"hello");
        let bytes = encode_record(&rec, false).unwrap();
        let decoded = decode_records(&bytes).unwrap();
        assert_eq!(decoded, vec![rec.clone()]);
        let d = &decoded[0];
        assert_eq!(d.tag(), Some("tagA"));
        assert_eq!(d.keys(), vec!["k1", "k2"]);
        assert_eq!(d.message_id(), "7F000001000118B4AAC2");
        assert_eq!(d.transaction_type(), TransactionType::NotTransaction);
        // 127.0.0.1 / port 10911 (0x2A9F) / offset 0x1234.
        assert_eq!(d.offset_msg_id, "7F00000100002A9F0000000000001234");
        // Uncompressed body shares the buffer.
        let start = bytes.as_ptr() as usize;
        let p = d.body.as_ptr() as usize;
        assert!(p >= start && p < start + bytes.len());
    }

    #[test]
    fn decodes_ipv6_v2_record_and_several_records() {
        let mut rec = sample(b"v6 body");
        rec.born_host = "[2001:db8::1]:4000".parse().unwrap();
        rec.store_host = "[::1]:10911".parse().unwrap();
        rec.sys_flag =
            sys_flag::BORNHOST_V6 | sys_flag::STOREHOST_V6 | sys_flag::TRANSACTION_COMMIT_TYPE;
        rec.offset_msg_id = offset_msg_id(rec.store_host.ip(), 10911, rec.commit_log_offset);
        assert_eq!(rec.offset_msg_id.len(), 56);
        let mut rec2 = sample(b"second");
        rec2.queue_offset = 42;
        rec2.properties.remove("UNIQ_KEY");
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&encode_record(&rec, true).unwrap());
        buf.extend_from_slice(&encode_record(&rec2, false).unwrap());
        let decoded = decode_records(&buf.freeze()).unwrap();
        assert_eq!(decoded, vec![rec, rec2.clone()]);
        assert_eq!(decoded[0].transaction_type(), TransactionType::Commit);
        assert_eq!(decoded[1].message_id(), rec2.offset_msg_id);
    }

    #[test]
    fn inflates_zlib_bodies_and_checks_crc_of_stored_bytes() {
        let plain = b"compress me compress me compress me".repeat(10);
        let mut enc = ZlibEncoder::new(Vec::new(), flate2::Compression::new(5));
        enc.write_all(&plain).unwrap();
        let stored = enc.finish().unwrap();
        let mut rec = sample(b"");
        rec.body = Bytes::from(stored.clone());
        rec.body_crc = java_crc(&stored);
        for type_bits in [0, sys_flag::COMPRESSION_ZLIB_TYPE] {
            rec.sys_flag = sys_flag::COMPRESSED | type_bits;
            let bytes = encode_record(&rec, false).unwrap();
            let d = &decode_records(&bytes).unwrap()[0];
            assert_eq!(&d.body[..], &plain[..]);
            assert_eq!(d.sys_flag & sys_flag::COMPRESSED, 0);
        }
        rec.sys_flag = sys_flag::COMPRESSED | (5 << 8);
        let bytes = encode_record(&rec, false).unwrap();
        assert!(matches!(
            decode_records(&bytes),
            Err(DecodeError::UnsupportedCompression { type_bits: 5, .. })
        ));
        rec.sys_flag = sys_flag::COMPRESSED;
        rec.body = Bytes::from_static(b"not zlib");
        rec.body_crc = 0;
        let bytes = encode_record(&rec, false).unwrap();
        assert!(matches!(
            decode_records(&bytes),
            Err(DecodeError::Decompress { .. })
        ));
    }

    #[test]
    fn unwraps_inner_batches() {
        let mut inner = BytesMut::new();
        let p1: Properties = [("UNIQ_KEY", "A"), ("TAGS", "t1")].into_iter().collect();
        let p2: Properties = [("UNIQ_KEY", "B")].into_iter().collect();
        encode_batch_entry(0, b"one", &p1, &mut inner).unwrap();
        encode_batch_entry(5, b"two", &p2, &mut inner).unwrap();
        let mut rec = sample(b"");
        rec.body_crc = java_crc(&inner);
        rec.body = inner.freeze();
        rec.sys_flag = sys_flag::INNER_BATCH | sys_flag::NEED_UNWRAP;
        let bytes = encode_record(&rec, false).unwrap();
        let d = decode_records(&bytes).unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(
            (&d[0].body[..], d[0].queue_offset, d[0].message_id()),
            (&b"one"[..], 41, "A")
        );
        assert_eq!(
            (&d[1].body[..], d[1].queue_offset, d[1].flag),
            (&b"two"[..], 42, 5)
        );
        assert_eq!(d[1].tag(), None);
        assert_eq!(d[1].topic, "orders");
    }

    #[test]
    fn crc_mismatch_names_offsets() {
        let rec = sample(b"payload");
        let bytes = encode_record(&rec, false).unwrap();
        let mut bad = BytesMut::from(&bytes[..]);
        let body_at = bytes.len() - 2 - rec.properties.encode().len() - 1 - 6 - 7;
        bad[body_at] ^= 0xFF;
        let err = decode_records(&bad.freeze()).unwrap_err();
        assert!(
            matches!(
                err,
                DecodeError::BodyCrcMismatch {
                    queue_offset: 41,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("queue offset 41"));
    }

    #[test]
    fn bad_magic() {
        let rec = sample(b"x");
        let mut bytes = BytesMut::from(&encode_record(&rec, false).unwrap()[..]);
        bytes[4] = 0;
        assert!(matches!(
            decode_records(&bytes.freeze()),
            Err(DecodeError::BadMagic { offset: 4, .. })
        ));
    }

    /// `sample(b"")` with `stored` as its body, compressed with `kind` bits.
    fn compressed(stored: Vec<u8>, kind: i32, offset: i64) -> Bytes {
        let mut rec = sample(b"");
        rec.queue_offset = offset;
        rec.body_crc = java_crc(&stored);
        rec.body = Bytes::from(stored);
        rec.sys_flag = sys_flag::COMPRESSED | kind;
        encode_record(&rec, false).unwrap()
    }

    fn zlib(plain: &[u8]) -> Vec<u8> {
        let mut enc = ZlibEncoder::new(Vec::new(), flate2::Compression::new(5));
        enc.write_all(plain).unwrap();
        enc.finish().unwrap()
    }

    fn lz4(plain: &[u8]) -> Vec<u8> {
        let mut enc = lz4_flex::frame::FrameEncoder::new(Vec::new());
        enc.write_all(plain).unwrap();
        enc.finish().unwrap()
    }

    fn zstd(plain: &[u8]) -> Vec<u8> {
        ruzstd::encoding::compress_to_vec(plain, ruzstd::encoding::CompressionLevel::Fastest)
    }

    #[test]
    fn inflates_lz4_frames_and_zstd_frames() {
        let plain = b"a 5.x Java producer compressed this ".repeat(40);
        for (stored, kind) in [
            (lz4(&plain), sys_flag::COMPRESSION_LZ4_TYPE),
            (zstd(&plain), sys_flag::COMPRESSION_ZSTD_TYPE),
        ] {
            let d = decode_pull_body(&compressed(stored, kind, 7), DEFAULT_MAX_BODY_BYTES);
            assert!(d.undecodable.is_empty(), "{:?}", d.undecodable);
            assert_eq!(d.records.len(), 1);
            assert_eq!(&d.records[0].body[..], &plain[..]);
            assert_eq!(d.records[0].sys_flag & sys_flag::COMPRESSED, 0);
            // Type bits stay, as in Java's decoder.
            assert_eq!(
                d.records[0].sys_flag & sys_flag::COMPRESSION_TYPE_MASK,
                kind
            );
        }
    }

    #[test]
    fn inflates_concatenated_and_skippable_zstd_frames() {
        let mut stored = zstd(b"first ");
        // A skippable frame (magic 0x184D2A5x, little-endian length).
        stored.extend_from_slice(&0x184D_2A50u32.to_le_bytes());
        stored.extend_from_slice(&3u32.to_le_bytes());
        stored.extend_from_slice(b"xyz");
        stored.extend_from_slice(&zstd(b"second"));
        let d = decode_pull_body(
            &compressed(stored, sys_flag::COMPRESSION_ZSTD_TYPE, 7),
            DEFAULT_MAX_BODY_BYTES,
        );
        assert!(d.undecodable.is_empty(), "{:?}", d.undecodable);
        assert_eq!(&d.records[0].body[..], b"first second");
    }

    #[test]
    fn a_body_inflating_beyond_the_limit_is_undecodable_for_every_codec() {
        let plain = vec![0u8; 300 * 1024];
        let limit = 64 * 1024;
        for (stored, kind, name) in [
            (zlib(&plain), sys_flag::COMPRESSION_ZLIB_TYPE, "zlib"),
            (zlib(&plain), 0, "zlib"),
            (lz4(&plain), sys_flag::COMPRESSION_LZ4_TYPE, "LZ4"),
            (zstd(&plain), sys_flag::COMPRESSION_ZSTD_TYPE, "ZSTD"),
        ] {
            let raw = compressed(stored, kind, 9);
            let d = decode_pull_body(&raw, limit);
            assert!(d.records.is_empty(), "{name}");
            assert_eq!(d.undecodable.len(), 1, "{name}");
            let u = &d.undecodable[0];
            assert_eq!((u.queue_offset, &u.raw), (9, &raw));
            assert!(
                u.reason.contains("inflates beyond 65536 bytes")
                    && u.reason.contains("the largest the 5.x target accepts")
                    && u.reason.contains(name),
                "{}",
                u.reason
            );
            // Exactly at the limit is fine.
            let d = decode_pull_body(&raw, plain.len());
            assert_eq!(d.records.len(), 1, "{name}");
        }
    }

    /// Yields zeros forever and counts what it handed out.
    struct Endless(usize);
    impl Read for Endless {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            buf.fill(0);
            self.0 += buf.len();
            Ok(buf.len())
        }
    }

    #[test]
    fn inflating_stops_at_the_limit_without_reading_or_allocating_further() {
        let limit = 1024 * 1024;
        let mut out = BoundedBody::new(100, limit);
        let mut endless = Endless(0);
        assert!(matches!(
            out.fill_from(&mut endless),
            Err(Inflate::TooLarge)
        ));
        assert!(endless.0 <= limit + 8 * 1024, "read {} bytes", endless.0);
        assert!(
            out.body.capacity() <= limit,
            "allocated {}",
            out.body.capacity()
        );

        // A zlib bomb: 64 MiB of zeros in about 64 KiB.
        let bomb = zlib(&vec![0u8; 64 * 1024 * 1024]);
        assert!(bomb.len() < 128 * 1024);
        let d = decode_pull_body(&compressed(bomb, sys_flag::COMPRESSION_ZLIB_TYPE, 3), limit);
        assert!(d.undecodable[0]
            .reason
            .contains("inflates beyond 1048576 bytes"));
    }

    #[test]
    fn a_forged_zstd_window_is_refused_before_allocating_it() {
        // Frame header: magic, descriptor 0 (window descriptor follows, no
        // checksum), window descriptor for a 1 GiB window.
        let mut forged = 0xFD2F_B528u32.to_le_bytes().to_vec();
        forged.extend_from_slice(&[0x00, (30 - 10) << 3]);
        forged.extend_from_slice(&[0u8; 16]);
        let d = decode_pull_body(
            &compressed(forged, sys_flag::COMPRESSION_ZSTD_TYPE, 4),
            DEFAULT_MAX_BODY_BYTES,
        );
        assert_eq!(d.undecodable.len(), 1);
        assert!(
            d.undecodable[0].reason.contains("ZSTD"),
            "{}",
            d.undecodable[0].reason
        );
    }

    #[test]
    fn bad_records_between_good_ones_are_kept_raw_and_decoding_goes_on() {
        let good = |offset: i64| {
            let mut r = sample(b"fine");
            r.queue_offset = offset;
            encode_record(&r, false).unwrap()
        };
        let mut crc = sample(b"corrupt");
        crc.queue_offset = 2;
        crc.body_crc ^= 0x10;
        let crc = encode_record(&crc, false).unwrap();
        let not_zlib = {
            let mut r = sample(b"");
            r.queue_offset = 4;
            r.body = Bytes::from_static(b"not zlib");
            r.body_crc = 0;
            r.sys_flag = sys_flag::COMPRESSED;
            encode_record(&r, false).unwrap()
        };
        let unknown = compressed(zlib(b"x"), 6 << 8, 5);
        let mut buf = BytesMut::new();
        for part in [&good(1), &crc, &good(3), &not_zlib, &unknown, &good(6)] {
            buf.extend_from_slice(part);
        }
        let d = decode_pull_body(&buf.freeze(), DEFAULT_MAX_BODY_BYTES);
        let offsets: Vec<i64> = d.records.iter().map(|r| r.queue_offset).collect();
        assert_eq!(offsets, vec![1, 3, 6]);
        let bad: Vec<i64> = d.undecodable.iter().map(|u| u.queue_offset).collect();
        assert_eq!(bad, vec![2, 4, 5]);
        assert_eq!(d.undecodable[0].raw, crc);
        assert!(d.undecodable[0].reason.contains("CRC mismatch"));
        assert!(d.undecodable[1].reason.contains("zlib"));
        assert!(d.undecodable[2].reason.contains("type 6"));
        assert!(d.broken.is_none());
    }

    #[test]
    fn a_broken_frame_ends_the_walk_and_keeps_the_rest() {
        let rec = sample(b"x");
        let one = encode_record(&rec, false).unwrap();
        let mut buf = BytesMut::from(&one[..]);
        let mut second = BytesMut::from(&one[..]);
        second[4] ^= 0xFF;
        buf.extend_from_slice(&second);
        buf.extend_from_slice(&one);
        let d = decode_pull_body(&buf.freeze(), DEFAULT_MAX_BODY_BYTES);
        assert_eq!(d.records.len(), 1);
        let broken = d.broken.unwrap();
        assert_eq!(broken.at, one.len());
        assert_eq!(broken.queue_offset, Some(41));
        assert_eq!(broken.raw.len(), 2 * one.len());
        assert!(matches!(broken.error, DecodeError::BadMagic { .. }));
    }

    #[test]
    fn a_broken_inner_batch_is_one_undecodable_record() {
        let mut rec = sample(b"");
        let inner = Bytes::from_static(&[0, 0, 0, 40, 0, 0]);
        rec.body_crc = java_crc(&inner);
        rec.body = inner;
        rec.sys_flag = sys_flag::INNER_BATCH | sys_flag::NEED_UNWRAP;
        let d = decode_pull_body(&encode_record(&rec, false).unwrap(), DEFAULT_MAX_BODY_BYTES);
        assert!(d.records.is_empty());
        assert_eq!(d.undecodable[0].queue_offset, 41);
        assert!(d.undecodable[0].reason.contains("batch entry"));
    }

    #[test]
    fn stored_tag_reads_the_tag_of_an_undecodable_record() {
        let mut rec = sample(b"payload");
        rec.body_crc ^= 1;
        let raw = encode_record(&rec, false).unwrap();
        assert_eq!(stored_tag(&raw).as_deref(), Some("tagA"));
        assert_eq!(stored_tag(&Bytes::from_static(b"junk")), None);
    }

    fn arb_record() -> impl Strategy<Value = (MessageRecord, bool)> {
        (
            proptest::collection::vec(any::<u8>(), 0..64),
            "[A-Za-z0-9_%-]{1,30}",
            any::<bool>(),
            any::<bool>(),
            proptest::collection::vec(("[a-z]{1,6}", "[a-z0-9 ]{1,6}"), 0..4),
            any::<i64>(),
        )
            .prop_map(|(body, topic, v6, v2, props, off)| {
                let mut r = sample(b"");
                r.body_crc = java_crc(&body);
                r.body = Bytes::from(body);
                r.topic = topic;
                r.queue_offset = off;
                r.properties = props.into_iter().collect();
                if v6 {
                    r.store_host = "[fe80::2]:10911".parse().unwrap();
                    r.sys_flag |= sys_flag::STOREHOST_V6;
                }
                r.offset_msg_id = offset_msg_id(
                    r.store_host.ip(),
                    i32::from(r.store_host.port()),
                    r.commit_log_offset,
                );
                (r, v2)
            })
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            let buf = Bytes::from(data);
            let _ = decode_records(&buf);
            let d = decode_pull_body(&buf, 1024);
            // Every byte is accounted for: decoded, kept raw, or the broken rest.
            let kept: usize = d.undecodable.iter().map(|u| u.raw.len()).sum::<usize>()
                + d.broken.as_ref().map_or(0, |b| b.raw.len());
            prop_assert!(kept <= buf.len());
        }

        #[test]
        fn arbitrary_record_tail_never_panics(tail in proptest::collection::vec(any::<u8>(), 0..200)) {
            // A valid prefix up to the body length, then garbage.
            let rec = sample(b"x");
            let full = encode_record(&rec, false).unwrap();
            let mut buf = BytesMut::from(&full[..80]);
            buf.extend_from_slice(&tail);
            let _ = decode_records(&buf.freeze());
        }

        #[test]
        fn roundtrip_and_truncation((rec, v2) in arb_record()) {
            let full = encode_record(&rec, v2).unwrap();
            prop_assert_eq!(decode_records(&full).unwrap(), vec![rec.clone()]);
            for cut in 1..full.len() {
                let part = full.slice(..cut);
                let truncated = matches!(decode_records(&part), Err(DecodeError::Truncated { .. }));
                prop_assert!(truncated, "cut at {}", cut);
            }
        }

        #[test]
        fn flipping_a_body_byte_is_a_crc_error((rec, v2) in arb_record(), pick in any::<usize>(), bit in 0u8..8) {
            prop_assume!(!rec.body.is_empty());
            let full = encode_record(&rec, v2).unwrap();
            let topic_len_size = if v2 { 2 } else { 1 };
            let body_start = full.len() - 2 - rec.properties.encode().len() - rec.topic.len()
                - topic_len_size - rec.body.len();
            let mut bad = BytesMut::from(&full[..]);
            bad[body_start + pick % rec.body.len()] ^= 1 << bit;
            let is_crc_error = matches!(
                decode_records(&bad.freeze()),
                Err(DecodeError::BodyCrcMismatch { .. })
            );
            prop_assert!(is_crc_error);
        }
    }
}
