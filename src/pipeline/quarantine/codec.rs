//! JSON form of what a quarantine entry keeps, so `quarantine replay` can
//! send exactly what was rejected: the translated message (body base64),
//! or, when translation or decoding failed, the raw 4.x record.

use std::collections::BTreeMap;

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::grpc::{MessageKind, OutgoingMessage};

#[derive(Serialize, Deserialize)]
struct Stored {
    topic: String,
    message_id: String,
    body_base64: String,
    tag: Option<String>,
    keys: Vec<String>,
    user_properties: BTreeMap<String, String>,
    born_timestamp_ms: i64,
    born_host: String,
    kind: String,
    fifo_group: Option<String>,
    delivery_timestamp_ms: Option<i64>,
}

pub fn encode(m: &OutgoingMessage) -> String {
    let (kind, fifo_group, delivery_timestamp_ms) = match &m.kind {
        MessageKind::Normal => ("NORMAL", None, None),
        MessageKind::Fifo { group } => ("FIFO", Some(group.clone()), None),
        MessageKind::Delay {
            delivery_timestamp_ms,
        } => ("DELAY", None, Some(*delivery_timestamp_ms)),
        MessageKind::Transaction => ("TRANSACTION", None, None),
    };
    let stored = Stored {
        topic: m.topic.clone(),
        message_id: m.message_id.clone(),
        body_base64: base64::engine::general_purpose::STANDARD.encode(&m.body),
        tag: m.tag.clone(),
        keys: m.keys.clone(),
        user_properties: m.user_properties.clone(),
        born_timestamp_ms: m.born_timestamp_ms,
        born_host: m.born_host.clone(),
        kind: kind.to_string(),
        fifo_group,
        delivery_timestamp_ms,
    };
    serde_json::to_string(&stored).unwrap_or_default()
}

#[derive(Serialize, Deserialize)]
struct StoredRaw {
    /// The stored 4.x record, base64.
    raw_record_base64: String,
}

/// What a quarantine entry keeps.
#[derive(Debug, Clone, PartialEq)]
pub enum Kept {
    /// The translated message, as it was refused by 5.x.
    Translated(OutgoingMessage),
    /// The 4.x record as stored (translation or decoding failed).
    RawRecord(bytes::Bytes),
}

/// Keeps a raw 4.x record.
pub fn encode_raw(raw: &[u8]) -> String {
    let stored = StoredRaw {
        raw_record_base64: base64::engine::general_purpose::STANDARD.encode(raw),
    };
    serde_json::to_string(&stored).unwrap_or_default()
}

/// Reads back either form.
pub fn decode_kept(text: &str) -> Result<Kept, String> {
    if let Ok(raw) = serde_json::from_str::<StoredRaw>(text) {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(raw.raw_record_base64.as_bytes())
            .map_err(|e| format!("stored record is not base64: {e}"))?;
        return Ok(Kept::RawRecord(bytes.into()));
    }
    decode(text).map(Kept::Translated)
}

pub fn decode(text: &str) -> Result<OutgoingMessage, String> {
    let s: Stored =
        serde_json::from_str(text).map_err(|e| format!("stored message is not valid JSON: {e}"))?;
    let body = base64::engine::general_purpose::STANDARD
        .decode(s.body_base64.as_bytes())
        .map_err(|e| format!("stored body is not base64: {e}"))?;
    let kind = match s.kind.as_str() {
        "NORMAL" => MessageKind::Normal,
        "FIFO" => MessageKind::Fifo {
            group: s.fifo_group.ok_or("FIFO message without group")?,
        },
        "DELAY" => MessageKind::Delay {
            delivery_timestamp_ms: s
                .delivery_timestamp_ms
                .ok_or("DELAY message without time")?,
        },
        "TRANSACTION" => MessageKind::Transaction,
        other => return Err(format!("unknown message kind `{other}`")),
    };
    Ok(OutgoingMessage {
        topic: s.topic,
        message_id: s.message_id,
        body: body.into(),
        tag: s.tag,
        keys: s.keys,
        user_properties: s.user_properties,
        born_timestamp_ms: s.born_timestamp_ms,
        born_host: s.born_host,
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_kind() {
        for kind in [
            MessageKind::Normal,
            MessageKind::Fifo { group: "g".into() },
            MessageKind::Delay {
                delivery_timestamp_ms: 5,
            },
            MessageKind::Transaction,
        ] {
            let m = OutgoingMessage {
                topic: "t".into(),
                message_id: "id".into(),
                body: bytes::Bytes::from_static(b"\x00\xffbody"),
                tag: Some("a".into()),
                keys: vec!["k1".into(), "k2".into()],
                user_properties: [("p".to_string(), "v".to_string())].into_iter().collect(),
                born_timestamp_ms: 42,
                born_host: "10.0.0.1".into(),
                kind,
            };
            assert_eq!(decode(&encode(&m)).unwrap(), m);
            assert_eq!(decode_kept(&encode(&m)).unwrap(), Kept::Translated(m));
        }
    }

    #[test]
    fn raw_records_round_trip() {
        let raw = b"\x00\x00\x00\x10raw record".to_vec();
        assert_eq!(
            decode_kept(&encode_raw(&raw)).unwrap(),
            Kept::RawRecord(raw.into())
        );
    }
}
