//! The plain message the 5.x side publishes, and the topic types it can target.
//!
//! These are the only types the rest of the bridge hands to `grpc`; no
//! protobuf type leaks out of this module's public API. The wire mapping
//! (`to_wire`) lives here too, as a pure function, so it can be tested with
//! tables.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use bytes::Bytes;

use super::pb;

/// One message to publish to a 5.x topic, exactly as it should land there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingMessage {
    pub topic: String,
    /// Preserved client message id (4.x `UNIQ_KEY`); becomes the 5.x
    /// `SystemProperties.message_id`.
    pub message_id: String,
    pub body: Bytes,
    pub tag: Option<String>,
    pub keys: Vec<String>,
    pub user_properties: BTreeMap<String, String>,
    pub born_timestamp_ms: i64,
    pub born_host: String,
    pub kind: MessageKind,
}

/// How the message is to be published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageKind {
    Normal,
    /// Ordered within `group` (the 5.x `message_group`).
    Fifo {
        group: String,
    },
    /// Delivered at `delivery_timestamp_ms` (epoch milliseconds).
    Delay {
        delivery_timestamp_ms: i64,
    },
    /// Published as a transaction half message, then committed.
    Transaction,
}

/// The message type a 5.x topic accepts (`MessageQueue.accept_message_types`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TopicMessageType {
    Normal,
    Fifo,
    Delay,
    Transaction,
}

impl MessageKind {
    /// The topic type a message of this kind needs.
    pub fn topic_type(&self) -> TopicMessageType {
        match self {
            MessageKind::Normal => TopicMessageType::Normal,
            MessageKind::Fifo { .. } => TopicMessageType::Fifo,
            MessageKind::Delay { .. } => TopicMessageType::Delay,
            MessageKind::Transaction => TopicMessageType::Transaction,
        }
    }
}

impl TopicMessageType {
    pub fn as_str(&self) -> &'static str {
        match self {
            TopicMessageType::Normal => "NORMAL",
            TopicMessageType::Fifo => "FIFO",
            TopicMessageType::Delay => "DELAY",
            TopicMessageType::Transaction => "TRANSACTION",
        }
    }

    pub(crate) fn from_wire(value: i32) -> Option<Self> {
        match pb::MessageType::try_from(value).ok()? {
            pb::MessageType::Normal => Some(TopicMessageType::Normal),
            pb::MessageType::Fifo => Some(TopicMessageType::Fifo),
            pb::MessageType::Delay => Some(TopicMessageType::Delay),
            pb::MessageType::Transaction => Some(TopicMessageType::Transaction),
            _ => None,
        }
    }

    pub(crate) fn to_wire(self) -> pb::MessageType {
        match self {
            TopicMessageType::Normal => pb::MessageType::Normal,
            TopicMessageType::Fifo => pb::MessageType::Fifo,
            TopicMessageType::Delay => pb::MessageType::Delay,
            TopicMessageType::Transaction => pb::MessageType::Transaction,
        }
    }
}

impl fmt::Display for TopicMessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How long after it was sent a transaction half message may stay
/// unresolved before the server asks a producer to resolve it. We commit
/// right after the prepare, so this only matters if the commit is lost;
/// then our telemetry handler answers the check (see `client.rs`).
pub(crate) const ORPHANED_TRANSACTION_RECOVERY: Duration = Duration::from_secs(30);

/// The longest recovery window a Java proxy takes
/// (`maxTransactionRecoverySecond`, 1 hour; a longer one is refused with
/// BAD_REQUEST).
pub(crate) const MAX_ORPHAN_RECOVERY: Duration = Duration::from_secs(3600);

/// The recovery window to send with a half message born at `born_ms`
/// (the 4.x born time the bridge keeps), sent at `now_ms`. A Java broker
/// counts the window from the born time: it checks back no earlier than
/// born + window, and refuses a producer's COMMIT that arrives later than
/// that ("wait check"; the proxy forwards the COMMIT one way, so the
/// bridge never hears of it). So the window is the message's age plus
/// [`ORPHANED_TRANSACTION_RECOVERY`], in whole seconds rounded up (the
/// proxy reads seconds). Past the proxy's maximum, none: without a window
/// the broker takes a COMMIT at any age and checks back after its own
/// `transactionTimeOut`.
pub(crate) fn orphan_recovery(born_ms: i64, now_ms: i64) -> Option<Duration> {
    let age_ms = if born_ms > 0 {
        now_ms.saturating_sub(born_ms).max(0) as u64
    } else {
        0
    };
    let window = ORPHANED_TRANSACTION_RECOVERY + Duration::from_secs(age_ms.div_ceil(1000));
    (window <= MAX_ORPHAN_RECOVERY).then_some(window)
}

/// CRC-32 (IEEE) of the body as the Java 5.x client spells it:
/// `Long.toHexString(crc).toUpperCase()`, i.e. upper-case hex without
/// leading zeros.
pub(crate) fn body_crc32(body: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let crc = crc32fast::hash(body);
    let digits = (8 - crc.leading_zeros() as usize / 4).max(1);
    (0..digits)
        .rev()
        .map(|i| char::from(HEX[((crc >> (i * 4)) & 0xF) as usize]))
        .collect()
}

pub(crate) fn timestamp_from_millis(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

pub(crate) fn millis_from_timestamp(ts: &prost_types::Timestamp) -> i64 {
    ts.seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(ts.nanos) / 1_000_000)
}

pub(crate) fn duration_to_wire(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: d.subsec_nanos() as i32,
    }
}

impl OutgoingMessage {
    /// The protobuf message for this message, bound for `queue_id`.
    pub(crate) fn to_wire(&self, namespace: &str, queue_id: i32) -> pb::Message {
        // Only a transaction's recovery window needs the clock.
        let now_ms = match self.kind {
            MessageKind::Transaction => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
            _ => 0,
        };
        self.to_wire_at(namespace, queue_id, now_ms)
    }

    /// [`Self::to_wire`] as sent at `now_ms` (the transaction recovery
    /// window depends on it).
    pub(crate) fn to_wire_at(&self, namespace: &str, queue_id: i32, now_ms: i64) -> pb::Message {
        let mut sys = pb::SystemProperties {
            tag: self.tag.clone(),
            keys: self.keys.clone(),
            message_id: self.message_id.clone(),
            body_digest: Some(pb::Digest {
                r#type: pb::DigestType::Crc32 as i32,
                checksum: body_crc32(&self.body),
            }),
            body_encoding: pb::Encoding::Identity as i32,
            message_type: self.kind.topic_type().to_wire() as i32,
            born_timestamp: Some(timestamp_from_millis(self.born_timestamp_ms)),
            born_host: self.born_host.clone(),
            queue_id: Some(queue_id),
            ..Default::default()
        };
        match &self.kind {
            MessageKind::Normal => {}
            MessageKind::Fifo { group } => sys.message_group = Some(group.clone()),
            MessageKind::Delay {
                delivery_timestamp_ms,
            } => sys.delivery_timestamp = Some(timestamp_from_millis(*delivery_timestamp_ms)),
            MessageKind::Transaction => {
                sys.orphaned_transaction_recovery_duration =
                    orphan_recovery(self.born_timestamp_ms, now_ms).map(duration_to_wire)
            }
        }
        pb::Message {
            topic: Some(pb::Resource {
                resource_namespace: namespace.to_owned(),
                name: self.topic.clone(),
            }),
            user_properties: self.user_properties.clone(),
            system_properties: Some(sys),
            body: self.body.clone(),
        }
    }
}

/// A message read back from 5.x with `Publisher::receive` (tests and the
/// verifier). Plain data, like [`OutgoingMessage`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    pub topic: String,
    pub message_id: String,
    pub body: Bytes,
    pub tag: Option<String>,
    pub keys: Vec<String>,
    pub user_properties: BTreeMap<String, String>,
    pub born_timestamp_ms: Option<i64>,
    pub born_host: String,
    pub message_type: Option<TopicMessageType>,
    pub message_group: Option<String>,
    pub delivery_timestamp_ms: Option<i64>,
    pub queue_id: i32,
    pub queue_offset: Option<i64>,
    /// `(type, checksum)` as the server reported it, e.g. `("CRC32", "1A2B")`.
    pub body_digest: Option<(String, String)>,
    /// Needed to ack the message.
    pub receipt_handle: String,
}

impl ReceivedMessage {
    pub(crate) fn from_wire(message: pb::Message) -> Self {
        let sys = message.system_properties.unwrap_or_default();
        ReceivedMessage {
            topic: message.topic.map(|t| t.name).unwrap_or_default(),
            message_id: sys.message_id,
            body: message.body,
            tag: sys.tag,
            keys: sys.keys,
            user_properties: message.user_properties.into_iter().collect(),
            born_timestamp_ms: sys.born_timestamp.as_ref().map(millis_from_timestamp),
            born_host: sys.born_host,
            message_type: TopicMessageType::from_wire(sys.message_type),
            message_group: sys.message_group,
            delivery_timestamp_ms: sys.delivery_timestamp.as_ref().map(millis_from_timestamp),
            queue_id: sys.queue_id.unwrap_or(0),
            queue_offset: sys.queue_offset,
            body_digest: sys.body_digest.map(|d| {
                let kind = pb::DigestType::try_from(d.r#type)
                    .map(|t| t.as_str_name().to_owned())
                    .unwrap_or_else(|_| d.r#type.to_string());
                (kind, d.checksum)
            }),
            receipt_handle: sys.receipt_handle.unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(kind: MessageKind) -> OutgoingMessage {
        OutgoingMessage {
            topic: "orders".into(),
            message_id: "7F0000011F9018B4AAC2".into(),
            body: Bytes::from_static(b"hello"),
            tag: Some("TagA".into()),
            keys: vec!["k1".into(), "k2".into()],
            user_properties: BTreeMap::from([("gray".into(), "true".into())]),
            born_timestamp_ms: 1_700_000_000_123,
            born_host: "10.0.0.1".into(),
            kind,
        }
    }

    #[test]
    fn crc32_matches_java_format() {
        // java.util.zip.CRC32 of "hello" is 0x3610A686.
        assert_eq!(body_crc32(b"hello"), "3610A686");
        // No zero padding, like Long.toHexString.
        assert_eq!(body_crc32(b""), "0");
        // Leading zero nibbles are dropped, inner zeros kept, as Java prints.
        for body in [&b"a"[..], b"abc", b"123456789", b"\x00\x01"] {
            assert_eq!(body_crc32(body), format!("{:X}", crc32fast::hash(body)));
        }
    }

    #[test]
    fn timestamps_round_trip_including_negative() {
        for ms in [0, 1, 999, 1_700_000_000_123, -1, -1001] {
            assert_eq!(millis_from_timestamp(&timestamp_from_millis(ms)), ms);
        }
        let ts = timestamp_from_millis(-1);
        assert!(ts.nanos >= 0);
    }

    #[test]
    fn queue_zero_is_written_on_the_wire() {
        // A server that reads an absent queue id as "choose one" (the
        // rocketmq-rust proxy) must see queue 0 as a choice made: field 13,
        // varint 0.
        let m = sample(MessageKind::Fifo { group: "g".into() });
        let sys = m.to_wire("ns", 0).system_properties.unwrap_or_default();
        let bytes = prost::Message::encode_to_vec(&sys);
        assert!(
            bytes.windows(2).any(|w| w == [13 << 3, 0]),
            "queue_id 0 missing from {bytes:?}"
        );
    }

    #[test]
    fn kinds_map_to_wire_fields() {
        let cases = [
            (MessageKind::Normal, pb::MessageType::Normal),
            (
                MessageKind::Fifo { group: "g1".into() },
                pb::MessageType::Fifo,
            ),
            (
                MessageKind::Delay {
                    delivery_timestamp_ms: 1_700_000_100_000,
                },
                pb::MessageType::Delay,
            ),
            (MessageKind::Transaction, pb::MessageType::Transaction),
        ];
        for (kind, wire_type) in cases {
            let m = sample(kind.clone());
            let w = m.to_wire("ns", 3);
            let sys = w.system_properties.clone().unwrap_or_default();
            assert_eq!(sys.message_type, wire_type as i32, "{kind:?}");
            assert_eq!(sys.queue_id, Some(3));
            assert_eq!(sys.message_id, m.message_id);
            assert_eq!(sys.tag.as_deref(), Some("TagA"));
            assert_eq!(sys.keys, vec!["k1".to_string(), "k2".to_string()]);
            assert_eq!(sys.born_host, "10.0.0.1");
            assert_eq!(
                sys.born_timestamp.as_ref().map(millis_from_timestamp),
                Some(1_700_000_000_123)
            );
            assert_eq!(sys.body_encoding, pb::Encoding::Identity as i32);
            assert_eq!(
                sys.body_digest,
                Some(pb::Digest {
                    r#type: pb::DigestType::Crc32 as i32,
                    checksum: "3610A686".into()
                })
            );
            assert_eq!(
                w.topic,
                Some(pb::Resource {
                    resource_namespace: "ns".into(),
                    name: "orders".into()
                })
            );
            assert_eq!(
                w.user_properties.get("gray").map(String::as_str),
                Some("true")
            );
            assert_eq!(&w.body[..], b"hello");
            match kind {
                MessageKind::Normal => {
                    assert!(sys.message_group.is_none() && sys.delivery_timestamp.is_none());
                    assert!(sys.orphaned_transaction_recovery_duration.is_none());
                }
                MessageKind::Fifo { .. } => assert_eq!(sys.message_group.as_deref(), Some("g1")),
                MessageKind::Delay { .. } => assert_eq!(
                    sys.delivery_timestamp.as_ref().map(millis_from_timestamp),
                    Some(1_700_000_100_000)
                ),
                MessageKind::Transaction => {
                    assert!(sys.message_group.is_none() && sys.delivery_timestamp.is_none());
                    // Born in 2023: older than the proxy's maximum window.
                    assert_eq!(sys.orphaned_transaction_recovery_duration, None);
                    let at = m.to_wire_at("ns", 3, m.born_timestamp_ms + 600_000);
                    assert_eq!(
                        at.system_properties
                            .unwrap_or_default()
                            .orphaned_transaction_recovery_duration,
                        Some(duration_to_wire(Duration::from_secs(630)))
                    );
                }
            }
        }
    }

    /// Java brokers measure a half message's recovery window from its born
    /// time, and refuse a producer's COMMIT after it ("Message commit fail
    /// [producer end] ... wait check"): forwarded from a backlog with its
    /// 4.x born time, the window must cover the message's age, or every
    /// COMMIT of a message older than the window waits for a check-back.
    #[test]
    fn orphan_recovery_is_counted_from_the_born_time() {
        let born = 1_800_000_000_000;
        let window = ORPHANED_TRANSACTION_RECOVERY;
        assert_eq!(orphan_recovery(born, born), Some(window));
        assert_eq!(
            orphan_recovery(born, born + 250),
            Some(window + Duration::from_secs(1))
        );
        assert_eq!(
            orphan_recovery(born, born + 3_000_000),
            Some(window + Duration::from_secs(3_000))
        );
        // A clock behind the born time, or no born time: the window alone.
        assert_eq!(orphan_recovery(born, born - 5_000), Some(window));
        assert_eq!(orphan_recovery(0, born), Some(window));
        // Beyond the proxy's maximum (1 h; more is refused as BAD_REQUEST):
        // none, so the broker accepts the COMMIT at any age.
        let last = MAX_ORPHAN_RECOVERY - window;
        assert_eq!(
            orphan_recovery(born, born + last.as_millis() as i64),
            Some(MAX_ORPHAN_RECOVERY)
        );
        assert_eq!(
            orphan_recovery(born, born + last.as_millis() as i64 + 1),
            None
        );
    }
}
