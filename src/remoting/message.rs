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

/// Largest body we inflate (guards against compression bombs).
pub const MAX_DECOMPRESSED_BODY: usize = 128 * 1024 * 1024;

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
    let mut raw = Vec::with_capacity(28);
    match store_ip {
        IpAddr::V4(ip) => raw.extend_from_slice(&ip.octets()),
        IpAddr::V6(ip) => raw.extend_from_slice(&ip.octets()),
    }
    raw.extend_from_slice(&port.to_be_bytes());
    raw.extend_from_slice(&commit_log_offset.to_be_bytes());
    hex::encode_upper(raw)
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

/// Decodes every record of a PULL body, unwrapping inner batches
/// (`INNER_BATCH` + `NEED_UNWRAP`) the way Java's `PullAPIWrapper` does.
pub fn decode_records(buf: &Bytes) -> Result<Vec<MessageRecord>, DecodeError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let (record, next) = decode_record(buf, at)?;
        let unwrap = sys_flag::INNER_BATCH | sys_flag::NEED_UNWRAP;
        if record.sys_flag & unwrap == unwrap {
            out.extend(unwrap_inner_batch(&record)?);
        } else {
            out.push(record);
        }
        at = next;
    }
    Ok(out)
}

/// Decodes the record starting at byte `at`; returns it and where the next
/// one starts. Checks the body CRC when it is non-zero and inflates
/// compressed bodies.
pub fn decode_record(buf: &Bytes, at: usize) -> Result<(MessageRecord, usize), DecodeError> {
    let mut head = Cursor {
        buf,
        pos: at,
        end: buf.len(),
    };
    let total = head.length("record total size")?;
    if total < 4 {
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
    let end = at + total;
    let mut c = Cursor {
        buf,
        pos: at + 4,
        end,
    };
    let magic_at = c.pos;
    let magic = c.u32("record magic code")?;
    if magic != MAGIC_V1 && magic != MAGIC_V2 {
        return Err(DecodeError::BadMagic {
            offset: magic_at,
            found: magic,
        });
    }
    let body_crc = c.u32("record body CRC")?;
    let queue_id = c.i32("record queue id")?;
    let flag = c.i32("record flag")?;
    let queue_offset = c.i64("record queue offset")?;
    let commit_log_offset = c.i64("record physical offset")?;
    let mut sys = c.i32("record sysFlag")?;
    let born_timestamp_ms = c.i64("record born timestamp")?;
    let (born_host, _) = c.host(sys & sys_flag::BORNHOST_V6 != 0, "record born host")?;
    let store_timestamp_ms = c.i64("record store timestamp")?;
    let (store_host, store_port) =
        c.host(sys & sys_flag::STOREHOST_V6 != 0, "record store host")?;
    let reconsume_times = c.i32("record reconsume times")?;
    let prepared_transaction_offset = c.i64("record prepared transaction offset")?;
    let body_len = c.length("record body length")?;
    let stored_body = c.slice(body_len, "record body")?;
    let topic_len = if magic == MAGIC_V2 {
        usize::from(c.u16("record topic length")?)
    } else {
        usize::from(c.u8("record topic length")?)
    };
    let topic = c.slice(topic_len, "record topic")?;
    let props_len = usize::from(c.u16("record properties length")?);
    let props = c.slice(props_len, "record properties")?;

    if body_crc != 0 && !stored_body.is_empty() {
        let computed = crc32fast::hash(&stored_body);
        // Java stores `crc32 & 0x7FFFFFFF` (UtilAll.crc32); accept the full
        // value too, in case a writer does not mask.
        if body_crc != computed & 0x7FFF_FFFF && body_crc != computed {
            return Err(DecodeError::BodyCrcMismatch {
                queue_offset,
                commit_log_offset,
                stored: body_crc,
                computed: computed & 0x7FFF_FFFF,
            });
        }
    }
    let body = if sys & sys_flag::COMPRESSED != 0 {
        let inflated = decompress(&stored_body, sys, queue_offset)?;
        sys &= !sys_flag::COMPRESSED;
        inflated
    } else {
        stored_body
    };

    let record = MessageRecord {
        topic: String::from_utf8_lossy(&topic).into_owned(),
        queue_id,
        queue_offset,
        commit_log_offset,
        sys_flag: sys,
        flag,
        body_crc,
        born_timestamp_ms,
        born_host,
        store_timestamp_ms,
        store_host,
        reconsume_times,
        prepared_transaction_offset,
        body,
        properties: Properties::decode(&String::from_utf8_lossy(&props)),
        offset_msg_id: offset_msg_id(store_host.ip(), store_port, commit_log_offset),
    };
    Ok((record, end))
}

fn decompress(stored: &[u8], sys: i32, queue_offset: i64) -> Result<Bytes, DecodeError> {
    match (sys & sys_flag::COMPRESSION_TYPE_MASK) >> 8 {
        // 0: 4.x clients (always zlib); 3: explicit zlib (5.x clients).
        0 | 3 => {
            let mut out = Vec::with_capacity(stored.len().saturating_mul(4).min(1 << 20));
            let limit = MAX_DECOMPRESSED_BODY as u64 + 1;
            flate2::read::ZlibDecoder::new(stored)
                .take(limit)
                .read_to_end(&mut out)
                .map_err(|e| DecodeError::Decompress {
                    queue_offset,
                    reason: format!("zlib: {e}"),
                })?;
            if out.len() > MAX_DECOMPRESSED_BODY {
                return Err(DecodeError::Decompress {
                    queue_offset,
                    reason: format!("inflated body exceeds {MAX_DECOMPRESSED_BODY} bytes"),
                });
            }
            Ok(Bytes::from(out))
        }
        1 => Err(DecodeError::UnsupportedCompression {
            queue_offset,
            kind: "LZ4",
        }),
        2 => Err(DecodeError::UnsupportedCompression {
            queue_offset,
            kind: "ZSTD",
        }),
        _ => Err(DecodeError::UnsupportedCompression {
            queue_offset,
            kind: "an unknown compression type",
        }),
    }
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
        rec.sys_flag = sys_flag::COMPRESSED | sys_flag::COMPRESSION_ZSTD_TYPE;
        let bytes = encode_record(&rec, false).unwrap();
        assert!(matches!(
            decode_records(&bytes),
            Err(DecodeError::UnsupportedCompression { kind: "ZSTD", .. })
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
