//! What `verify` compares between the message the bridge should have sent
//! and the record 5.x holds: a small, storable summary of each side.
//!
//! Owns: reading a stored 5.x record as the message a consumer sees
//! (message id, body digest, tag, keys, user properties, type, FIFO group)
//! and the field-by-field comparison. Must not touch: I/O, counting.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};

use crate::grpc::{MessageKind, OutgoingMessage};
use crate::remoting::{names, MessageRecord, TransactionType};
use crate::reserved::is_reserved_property;

/// The 5.x message type as a consumer sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoredType {
    Normal,
    Fifo,
    Delay,
    Transaction,
}

impl StoredType {
    pub fn as_str(self) -> &'static str {
        match self {
            StoredType::Normal => "NORMAL",
            StoredType::Fifo => "FIFO",
            StoredType::Delay => "DELAY",
            StoredType::Transaction => "TRANSACTION",
        }
    }
}

/// One message, either as expected (from the 4.x record, translated the way
/// the bridge translates it) or as stored in 5.x.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub message_id: String,
    /// SHA-1 of the body, hex.
    pub body_sha1: String,
    pub body_len: usize,
    pub tag: Option<String>,
    pub keys: Vec<String>,
    pub user_properties: BTreeMap<String, String>,
    pub kind: StoredType,
    /// FIFO `message_group` (stored as `__SHARDINGKEY`).
    pub group: Option<String>,
    /// DELAY delivery time, epoch ms, when known.
    pub delivery_ms: Option<i64>,
}

fn sha1_hex(body: &[u8]) -> String {
    hex::encode(Sha1::digest(body))
}

impl Fingerprint {
    /// What the bridge should have put in 5.x for this translated message.
    pub fn expected(msg: &OutgoingMessage) -> Self {
        let (kind, group, delivery_ms) = match &msg.kind {
            MessageKind::Normal => (StoredType::Normal, None, None),
            MessageKind::Fifo { group } => (StoredType::Fifo, Some(group.clone()), None),
            MessageKind::Delay {
                delivery_timestamp_ms,
            } => (StoredType::Delay, None, Some(*delivery_timestamp_ms)),
            MessageKind::Transaction => (StoredType::Transaction, None, None),
        };
        Fingerprint {
            message_id: msg.message_id.clone(),
            body_sha1: sha1_hex(&msg.body),
            body_len: msg.body.len(),
            tag: msg.tag.clone(),
            keys: msg.keys.clone(),
            user_properties: msg.user_properties.clone(),
            kind,
            group,
            delivery_ms,
        }
    }

    /// A record read back from a 5.x broker over Remoting. Properties that
    /// RocketMQ reserves for itself are not user properties (the servers add
    /// several: `MSG_REGION`, `TRACE_ON`, `CLUSTER`, timer bookkeeping).
    pub fn stored(rec: &MessageRecord) -> Self {
        let props = &rec.properties;
        let group = props
            .get(names::SHARDING_KEY)
            .filter(|g| !g.is_empty())
            .map(str::to_string);
        let delivery_ms = stored_delivery_ms(rec);
        let kind = if rec.transaction_type() == TransactionType::Commit {
            StoredType::Transaction
        } else if group.is_some() {
            StoredType::Fifo
        } else if delivery_ms.is_some() {
            StoredType::Delay
        } else {
            StoredType::Normal
        };
        Fingerprint {
            message_id: rec.message_id().to_string(),
            body_sha1: sha1_hex(&rec.body),
            body_len: rec.body.len(),
            tag: rec.tag().filter(|t| !t.is_empty()).map(str::to_string),
            keys: rec.keys().into_iter().map(str::to_string).collect(),
            user_properties: props
                .iter()
                .filter(|(k, _)| !is_reserved_property(k))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            kind,
            group,
            delivery_ms,
        }
    }

    /// The fields in which `stored` differs from `self` (the expected
    /// message), each named with both values; empty when intact.
    ///
    /// A DELAY delivery time may be later than the original one (the bridge
    /// clamps a past time to "now + delay_min_lead" when it sends), never
    /// earlier.
    pub fn differences(&self, stored: &Fingerprint) -> Vec<String> {
        let mut out = Vec::new();
        if self.body_sha1 != stored.body_sha1 {
            out.push(format!(
                "body: sha1 {} ({} B) expected, {} ({} B) stored",
                short(&self.body_sha1),
                self.body_len,
                short(&stored.body_sha1),
                stored.body_len
            ));
        }
        if self.tag != stored.tag {
            out.push(format!(
                "tag: {:?} expected, {:?} stored",
                self.tag, stored.tag
            ));
        }
        if self.keys != stored.keys {
            out.push(format!(
                "keys: {:?} expected, {:?} stored",
                self.keys, stored.keys
            ));
        }
        if self.user_properties != stored.user_properties {
            let mut names: Vec<&String> = self
                .user_properties
                .keys()
                .chain(stored.user_properties.keys())
                .filter(|k| self.user_properties.get(*k) != stored.user_properties.get(*k))
                .collect();
            names.sort();
            names.dedup();
            let detail: Vec<String> = names
                .into_iter()
                .map(|k| {
                    format!(
                        "{k}: {:?} expected, {:?} stored",
                        self.user_properties.get(k),
                        stored.user_properties.get(k)
                    )
                })
                .collect();
            out.push(format!("user properties: {}", detail.join("; ")));
        }
        if self.kind != stored.kind {
            out.push(format!(
                "type: {} expected, {} stored",
                self.kind.as_str(),
                stored.kind.as_str()
            ));
        } else if self.group != stored.group {
            out.push(format!(
                "FIFO group: {:?} expected, {:?} stored",
                self.group, stored.group
            ));
        } else if let (Some(want), Some(got)) = (self.delivery_ms, stored.delivery_ms) {
            if got < want {
                out.push(format!(
                    "delivery time: {got} stored is before the original {want}"
                ));
            }
        }
        out
    }
}

fn short(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}

/// Where a stored DELAY record is to be delivered: Java keeps
/// `TIMER_DELIVER_MS` (or the ONS `__STARTDELIVERTIME`); rocketmq-broker
/// 1.0.0 keeps `TIMER_DELIVERY_TOKEN = F:1:<UNIQ_KEY>:<deliver ms>:0`.
fn stored_delivery_ms(rec: &MessageRecord) -> Option<i64> {
    let props = &rec.properties;
    for name in [names::TIMER_DELIVER_MS, names::START_DELIVER_TIME] {
        if let Some(ms) = props.get(name).and_then(|v| v.trim().parse().ok()) {
            return Some(ms);
        }
    }
    let token = props.get("TIMER_DELIVERY_TOKEN")?;
    token.split(':').nth(3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::test_support::RecordBuilder;
    use bytes::Bytes;

    fn outgoing(kind: MessageKind) -> OutgoingMessage {
        OutgoingMessage {
            topic: "t".into(),
            message_id: "ID1".into(),
            body: Bytes::from_static(b"hello"),
            tag: Some("tagA".into()),
            keys: vec!["k1".into(), "k2".into()],
            user_properties: BTreeMap::from([("env".into(), "gray".into())]),
            born_timestamp_ms: 1,
            born_host: "10.0.0.1".into(),
            kind,
        }
    }

    fn stored(props: &[(&str, &str)], body: &'static [u8]) -> Fingerprint {
        let mut b = RecordBuilder::new().body(body);
        for (k, v) in props {
            b = b.prop(k, v);
        }
        Fingerprint::stored(&b.build())
    }

    const INTACT: &[(&str, &str)] = &[
        ("UNIQ_KEY", "ID1"),
        ("TAGS", "tagA"),
        ("KEYS", "k1 k2"),
        ("env", "gray"),
        ("MSG_REGION", "DefaultRegion"),
        ("TRACE_ON", "true"),
    ];

    #[test]
    fn an_intact_copy_has_no_differences() {
        let want = Fingerprint::expected(&outgoing(MessageKind::Normal));
        let got = stored(INTACT, b"hello");
        assert_eq!(got.message_id, "ID1");
        assert_eq!(want.differences(&got), Vec::<String>::new());
    }

    #[test]
    fn each_damaged_field_is_named() {
        let want = Fingerprint::expected(&outgoing(MessageKind::Normal));
        let got = stored(
            &[
                ("UNIQ_KEY", "ID1"),
                ("TAGS", "tagB"),
                ("KEYS", "k1"),
                ("env", "base"),
                ("extra", "x"),
            ],
            b"hellO",
        );
        let diff = want.differences(&got).join("\n");
        for field in ["body:", "tag:", "keys:", "env:", "extra:"] {
            assert!(diff.contains(field), "{field} missing in {diff}");
        }
    }

    #[test]
    fn types_groups_and_delivery_times_are_compared() {
        let fifo = Fingerprint::expected(&outgoing(MessageKind::Fifo {
            group: "order-1".into(),
        }));
        let mut props = INTACT.to_vec();
        props.push(("__SHARDINGKEY", "order-1"));
        assert!(fifo.differences(&stored(&props, b"hello")).is_empty());
        props.pop();
        props.push(("__SHARDINGKEY", "order-2"));
        assert!(fifo.differences(&stored(&props, b"hello"))[0].starts_with("FIFO group"));
        assert!(fifo.differences(&stored(INTACT, b"hello"))[0]
            .starts_with("type: FIFO expected, NORMAL"));

        let delay = Fingerprint::expected(&outgoing(MessageKind::Delay {
            delivery_timestamp_ms: 5_000,
        }));
        let mut props = INTACT.to_vec();
        props.push(("TIMER_DELIVERY_TOKEN", "F:1:ID1:6000:0"));
        assert!(
            delay.differences(&stored(&props, b"hello")).is_empty(),
            "a later (clamped) time is fine"
        );
        props.pop();
        props.push(("TIMER_DELIVER_MS", "4000"));
        assert!(delay.differences(&stored(&props, b"hello"))[0].starts_with("delivery time"));
    }
}
