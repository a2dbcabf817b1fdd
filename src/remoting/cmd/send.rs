//! SEND_MESSAGE, SEND_MESSAGE_V2 and SEND_BATCH_MESSAGE (one header writer, long or one-letter names).
//!
//! Used to write into a cluster over Remoting: test fixtures, reverse
//! bridging and read-back checks. Bodies above `compress_over` are
//! zlib-compressed with the COMPRESSED sysFlag, as 4.x clients do.

use std::io::Write;

use bytes::{Bytes, BytesMut};

use crate::remoting::codes::{request, response};
use crate::remoting::error::{RemotingError, Result};
use crate::remoting::header::RemotingCommand;
use crate::remoting::message::{encode_batch_entry, sys_flag};
use crate::remoting::properties::{names, Properties};
use crate::remoting::RemotingClient;

/// Topic a broker creates new topics from when auto-creation is on.
pub const DEFAULT_TOPIC: &str = "TBW102";
pub const DEFAULT_TOPIC_QUEUE_NUMS: i32 = 4;
/// Largest properties string a 4.x broker accepts (`Short.MAX_VALUE`).
pub const MAX_PROPERTIES_LEN: usize = 32767;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendRequest {
    pub producer_group: String,
    pub topic: String,
    pub queue_id: i32,
    pub body: Bytes,
    /// TAGS, KEYS, UNIQ_KEY, DELAY, __SHARDINGKEY and user properties alike.
    pub properties: Properties,
    pub sys_flag: i32,
    pub born_timestamp_ms: i64,
    pub flag: i32,
    /// Compress bodies longer than this many bytes (zlib); `None`: never.
    pub compress_over: Option<usize>,
}

impl SendRequest {
    pub fn new(producer_group: &str, topic: &str, queue_id: i32, body: impl Into<Bytes>) -> Self {
        SendRequest {
            producer_group: producer_group.to_string(),
            topic: topic.to_string(),
            queue_id,
            body: body.into(),
            properties: Properties::new(),
            sys_flag: 0,
            born_timestamp_ms: now_ms(),
            flag: 0,
            compress_over: None,
        }
    }

    pub fn to_command(&self) -> Result<RemotingCommand> {
        self.command(request::SEND_MESSAGE, &LONG_NAMES)
    }

    /// SEND_MESSAGE_V2: the same request with the one-letter header names
    /// Java producers send (`SendMessageRequestHeaderV2`).
    pub fn to_command_v2(&self) -> Result<RemotingCommand> {
        self.command(request::SEND_MESSAGE_V2, &V2_NAMES)
    }

    fn command(&self, code: i32, names: &HeaderNames) -> Result<RemotingCommand> {
        let mut sys = self.sys_flag;
        let body = match self.compress_over {
            Some(limit) if self.body.len() > limit => {
                sys |= sys_flag::COMPRESSED;
                zlib(&self.body)?
            }
            _ => self.body.clone(),
        };
        let header = SendHeader {
            producer_group: &self.producer_group,
            topic: &self.topic,
            queue_id: self.queue_id,
            sys_flag: sys,
            born_timestamp_ms: self.born_timestamp_ms,
            flag: self.flag,
            properties: checked_properties(&self.properties)?,
            batch: false,
        };
        Ok(header
            .write(RemotingCommand::request(code), names)
            .with_body(body))
    }
}

/// The header fields of a send (`SendMessageRequestHeader`), written under
/// the long names (SEND_MESSAGE) or the one-letter ones
/// (`SendMessageRequestHeaderV2`: SEND_MESSAGE_V2, and SEND_BATCH_MESSAGE,
/// which Java brokers decode with that header only).
struct SendHeader<'a> {
    producer_group: &'a str,
    topic: &'a str,
    queue_id: i32,
    sys_flag: i32,
    born_timestamp_ms: i64,
    flag: i32,
    properties: String,
    batch: bool,
}

/// producerGroup, topic, defaultTopic, defaultTopicQueueNums, queueId,
/// sysFlag, bornTimestamp, flag, properties, reconsumeTimes, unitMode,
/// batch, in this order.
type HeaderNames = [&'static str; 12];

const LONG_NAMES: HeaderNames = [
    "producerGroup",
    "topic",
    "defaultTopic",
    "defaultTopicQueueNums",
    "queueId",
    "sysFlag",
    "bornTimestamp",
    "flag",
    "properties",
    "reconsumeTimes",
    "unitMode",
    "batch",
];

/// `SendMessageRequestHeaderV2`'s letters (its `l`, maxReconsumeTimes, is
/// never sent).
const V2_NAMES: HeaderNames = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "m"];

impl SendHeader<'_> {
    fn write(self, cmd: RemotingCommand, n: &HeaderNames) -> RemotingCommand {
        cmd.with_ext(n[0], self.producer_group)
            .with_ext(n[1], self.topic)
            .with_ext(n[2], DEFAULT_TOPIC)
            .with_ext(n[3], DEFAULT_TOPIC_QUEUE_NUMS)
            .with_ext(n[4], self.queue_id)
            .with_ext(n[5], self.sys_flag)
            .with_ext(n[6], self.born_timestamp_ms)
            .with_ext(n[7], self.flag)
            .with_ext(n[8], self.properties)
            .with_ext(n[9], 0)
            .with_ext(n[10], false)
            .with_ext(n[11], self.batch)
    }
}

/// One message of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchEntry {
    pub body: Bytes,
    pub properties: Properties,
    pub flag: i32,
}

/// SEND_BATCH_MESSAGE: all entries go to one queue. Entries are not
/// compressed (Java does not compress batches either). The header carries
/// the one-letter names of `SendMessageRequestHeaderV2`: Java brokers decode
/// a batch with that header only, and find no topic under the long names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendBatchRequest {
    pub producer_group: String,
    pub topic: String,
    pub queue_id: i32,
    pub entries: Vec<BatchEntry>,
    pub born_timestamp_ms: i64,
}

impl SendBatchRequest {
    pub fn to_command(&self) -> Result<RemotingCommand> {
        if self.entries.is_empty() {
            return Err(RemotingError::InvalidRequest("empty batch".into()));
        }
        let mut body = BytesMut::new();
        for e in &self.entries {
            encode_batch_entry(e.flag, &e.body, &e.properties, &mut body)?;
        }
        let mut batch_props = Properties::new();
        batch_props.insert(names::WAIT, "true");
        let header = SendHeader {
            producer_group: &self.producer_group,
            topic: &self.topic,
            queue_id: self.queue_id,
            sys_flag: 0,
            born_timestamp_ms: self.born_timestamp_ms,
            flag: 0,
            properties: batch_props.encode(),
            batch: true,
        };
        Ok(header
            .write(
                RemotingCommand::request(request::SEND_BATCH_MESSAGE),
                &V2_NAMES,
            )
            .with_body(body.freeze()))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendStatus {
    SendOk,
    FlushDiskTimeout,
    FlushSlaveTimeout,
    SlaveNotAvailable,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendResult {
    pub status: SendStatus,
    /// Broker (offset) message id; comma-separated for a batch.
    pub offset_msg_id: String,
    pub queue_id: i32,
    pub queue_offset: i64,
    pub transaction_id: Option<String>,
}

pub fn parse_send_response(addr: &str, resp: RemotingCommand) -> Result<SendResult> {
    let status = match resp.code {
        response::SUCCESS => SendStatus::SendOk,
        response::FLUSH_DISK_TIMEOUT => SendStatus::FlushDiskTimeout,
        response::FLUSH_SLAVE_TIMEOUT => SendStatus::FlushSlaveTimeout,
        response::SLAVE_NOT_AVAILABLE => SendStatus::SlaveNotAvailable,
        _ => return Err(super::broker_error(addr, &resp)),
    };
    Ok(SendResult {
        status,
        offset_msg_id: resp.ext("msgId").unwrap_or_default().to_string(),
        queue_id: resp.ext_i32("queueId")?.unwrap_or(-1),
        queue_offset: resp.ext_i64_required("queueOffset")?,
        transaction_id: resp.ext("transactionId").map(str::to_string),
    })
}

fn checked_properties(props: &Properties) -> Result<String> {
    let text = props.encode();
    if text.len() > MAX_PROPERTIES_LEN {
        return Err(RemotingError::InvalidRequest(format!(
            "message properties are {} bytes; a 4.x broker accepts at most {MAX_PROPERTIES_LEN}",
            text.len()
        )));
    }
    Ok(text)
}

/// zlib at level 5, the Java client's default.
fn zlib(body: &[u8]) -> Result<Bytes> {
    let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(5));
    enc.write_all(body)
        .and_then(|_| enc.finish())
        .map(Bytes::from)
        .map_err(|e| RemotingError::InvalidRequest(format!("cannot compress body: {e}")))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl RemotingClient {
    pub async fn send_message(&self, broker: &str, req: &SendRequest) -> Result<SendResult> {
        let resp = self
            .invoke(broker, req.to_command()?, self.request_timeout())
            .await?;
        parse_send_response(broker, resp)
    }

    /// SEND_MESSAGE_V2, as Java 4.x producers send.
    pub async fn send_message_v2(&self, broker: &str, req: &SendRequest) -> Result<SendResult> {
        let resp = self
            .invoke(broker, req.to_command_v2()?, self.request_timeout())
            .await?;
        parse_send_response(broker, resp)
    }

    pub async fn send_batch(&self, broker: &str, req: &SendBatchRequest) -> Result<SendResult> {
        let resp = self
            .invoke(broker, req.to_command()?, self.request_timeout())
            .await?;
        parse_send_response(broker, resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remoting::message::{decode_records, encode_record, MessageRecord};

    #[test]
    fn v2_uses_the_one_letter_names() {
        let mut req = SendRequest::new("pg", "orders", 3, Bytes::from_static(b"hi"));
        req.properties.insert("UNIQ_KEY", "id1");
        req.born_timestamp_ms = 7;
        let v2 = req.to_command_v2().unwrap();
        assert_eq!(v2.code, 310);
        assert_eq!(v2.ext("a"), Some("pg"));
        assert_eq!(v2.ext("b"), Some("orders"));
        assert_eq!(v2.ext("c"), Some("TBW102"));
        assert_eq!(v2.ext("e"), Some("3"));
        assert_eq!(v2.ext("g"), Some("7"));
        assert_eq!(v2.ext("i"), Some("UNIQ_KEY\u{1}id1\u{2}"));
        assert_eq!(v2.ext("m"), Some("false"));
        assert_eq!(v2.ext("producerGroup"), None);
        assert_eq!(&v2.body[..], b"hi");
    }

    #[test]
    fn header_names_and_compression() {
        let mut req = SendRequest::new("pg", "orders", 1, Bytes::from(vec![b'x'; 5000]));
        req.properties.insert("TAGS", "a");
        req.born_timestamp_ms = 99;
        let plain = req.to_command().unwrap();
        assert_eq!(plain.code, 10);
        assert_eq!(plain.ext("producerGroup"), Some("pg"));
        assert_eq!(plain.ext("defaultTopic"), Some("TBW102"));
        assert_eq!(plain.ext("defaultTopicQueueNums"), Some("4"));
        assert_eq!(plain.ext("bornTimestamp"), Some("99"));
        assert_eq!(plain.ext("properties"), Some("TAGS\u{1}a\u{2}"));
        assert_eq!(plain.ext("batch"), Some("false"));
        assert_eq!(plain.ext("sysFlag"), Some("0"));
        assert_eq!(plain.body.len(), 5000);

        req.compress_over = Some(4096);
        let compressed = req.to_command().unwrap();
        assert_eq!(compressed.ext("sysFlag"), Some("1"));
        assert!(compressed.body.len() < 100);
        // What a broker would store decodes back to the original body.
        let rec = MessageRecord {
            topic: "orders".into(),
            queue_id: 1,
            queue_offset: 0,
            commit_log_offset: 0,
            sys_flag: 1,
            flag: 0,
            body_crc: crc32fast::hash(&compressed.body) & 0x7FFF_FFFF,
            born_timestamp_ms: 99,
            born_host: "127.0.0.1:1".parse().unwrap(),
            store_timestamp_ms: 100,
            store_host: "127.0.0.1:2".parse().unwrap(),
            reconsume_times: 0,
            prepared_transaction_offset: 0,
            body: compressed.body.clone(),
            properties: Properties::new(),
            offset_msg_id: String::new(),
        };
        let back = decode_records(&encode_record(&rec, false).unwrap()).unwrap();
        assert_eq!(back[0].body, req.body);
    }

    #[test]
    fn oversized_properties_are_refused() {
        let mut req = SendRequest::new("pg", "t", 0, Bytes::new());
        req.properties.insert("big", "v".repeat(40_000));
        assert!(matches!(
            req.to_command(),
            Err(RemotingError::InvalidRequest(_))
        ));
    }

    #[test]
    fn batch_and_response() {
        let req = SendBatchRequest {
            producer_group: "pg".into(),
            topic: "t".into(),
            queue_id: 0,
            entries: vec![BatchEntry {
                body: Bytes::from_static(b"abc"),
                properties: [("UNIQ_KEY", "U1")].into_iter().collect(),
                flag: 0,
            }],
            born_timestamp_ms: 1,
        };
        let cmd = req.to_command().unwrap();
        assert_eq!(cmd.code, 320);
        // Java brokers decode SEND_BATCH_MESSAGE with SendMessageRequestHeaderV2
        // (one-letter names); long names leave the topic blank there.
        assert_eq!(cmd.ext("b"), Some("t"));
        assert_eq!(cmd.ext("a"), Some("pg"));
        assert_eq!(cmd.ext("m"), Some("true"));
        assert_eq!(cmd.ext("topic"), None);
        assert_eq!(
            cmd.body.len(),
            4 + 4 + 4 + 4 + 4 + 3 + 2 + "UNIQ_KEY\u{1}U1\u{2}".len()
        );

        let mut resp = RemotingCommand::request(0)
            .with_ext("msgId", "ABC")
            .with_ext("queueId", 0)
            .with_ext("queueOffset", 7);
        resp.flag = 1;
        let r = parse_send_response("b:1", resp.clone()).unwrap();
        assert_eq!(
            (r.status, r.queue_offset, r.offset_msg_id.as_str()),
            (SendStatus::SendOk, 7, "ABC")
        );
        resp.code = 12;
        assert_eq!(
            parse_send_response("b:1", resp.clone()).unwrap().status,
            SendStatus::FlushSlaveTimeout
        );
        resp.code = 13;
        assert!(parse_send_response("b:1", resp).is_err());
    }
}
