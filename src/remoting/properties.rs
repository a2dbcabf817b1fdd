//! Message properties of a 4.x record: an insertion-ordered list of
//! (name, value) pairs, their wire form (`name 0x01 value 0x02 ...`, Java's
//! `MessageDecoder.messageProperties2String` / `string2messageProperties`),
//! and the names of the system properties Java's `MessageConst` defines.

/// Separates a property name from its value.
pub const NAME_VALUE_SEPARATOR: char = '\u{1}';
/// Ends each property.
pub const PROPERTY_SEPARATOR: char = '\u{2}';

/// Insertion-ordered message properties. A name occurs at most once;
/// inserting an existing name replaces its value in place.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties(Vec<(String, String)>);

impl Properties {
    pub fn new() -> Self {
        Properties(Vec::new())
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Sets `name` to `value`; returns the previous value.
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) -> Option<String> {
        let name = name.into();
        let value = value.into();
        match self.0.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => Some(std::mem::replace(v, value)),
            None => {
                self.0.push((name, value));
                None
            }
        }
    }

    pub fn remove(&mut self, name: &str) -> Option<String> {
        let pos = self.0.iter().position(|(n, _)| n == name)?;
        Some(self.0.remove(pos).1)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Parses the wire form the way Java does: segments without a name or
    /// without a value are skipped; a repeated name keeps the last value.
    pub fn decode(text: &str) -> Properties {
        // One pass over the bytes (both separators are ASCII, so every cut
        // is a char boundary); a repeated name replaces the earlier value
        // without allocating a name first. Every record of every pull
        // passes here.
        let mut props = Properties(Vec::with_capacity(8));
        let bytes = text.as_bytes();
        let mut start = 0;
        while start < bytes.len() {
            let end = bytes[start..]
                .iter()
                .position(|&b| b == PROPERTY_SEPARATOR as u8)
                .map_or(bytes.len(), |p| start + p);
            let segment = &text[start..end];
            if let Some(eq) = segment
                .bytes()
                .position(|b| b == NAME_VALUE_SEPARATOR as u8)
            {
                let (name, value) = (&segment[..eq], &segment[eq + 1..]);
                if !name.is_empty() && !value.is_empty() {
                    match props.0.iter_mut().find(|(n, _)| n == name) {
                        Some((_, v)) => value.clone_into(v),
                        None => props.0.push((name.to_owned(), value.to_owned())),
                    }
                }
            }
            start = end + 1;
        }
        props
    }

    /// The wire form (`messageProperties2String`).
    pub fn encode(&self) -> String {
        let mut out =
            String::with_capacity(self.0.iter().map(|(n, v)| n.len() + v.len() + 2).sum());
        for (n, v) in &self.0 {
            out.push_str(n);
            out.push(NAME_VALUE_SEPARATOR);
            out.push_str(v);
            out.push(PROPERTY_SEPARATOR);
        }
        out
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Properties {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut p = Properties::new();
        for (k, v) in iter {
            p.insert(k, v);
        }
        p
    }
}

/// The wire form of `props` (free-function spelling of [`Properties::encode`]).
pub fn encode_properties(props: &Properties) -> String {
    props.encode()
}

/// Property names of Java's `MessageConst` (4.x and 5.x), plus the
/// commercial `__STARTDELIVERTIME` of ApsaraMQ / ONS 4.x clients.
pub mod names {
    pub const KEYS: &str = "KEYS";
    pub const TAGS: &str = "TAGS";
    pub const WAIT: &str = "WAIT";
    pub const DELAY: &str = "DELAY";
    pub const RETRY_TOPIC: &str = "RETRY_TOPIC";
    pub const REAL_TOPIC: &str = "REAL_TOPIC";
    pub const REAL_QID: &str = "REAL_QID";
    pub const TRAN_MSG: &str = "TRAN_MSG";
    pub const PGROUP: &str = "PGROUP";
    pub const MIN_OFFSET: &str = "MIN_OFFSET";
    pub const MAX_OFFSET: &str = "MAX_OFFSET";
    pub const BUYER_ID: &str = "BUYER_ID";
    pub const ORIGIN_MESSAGE_ID: &str = "ORIGIN_MESSAGE_ID";
    pub const TRANSFER_FLAG: &str = "TRANSFER_FLAG";
    pub const CORRECTION_FLAG: &str = "CORRECTION_FLAG";
    pub const MQ2_FLAG: &str = "MQ2_FLAG";
    pub const RECONSUME_TIME: &str = "RECONSUME_TIME";
    pub const MSG_REGION: &str = "MSG_REGION";
    pub const TRACE_ON: &str = "TRACE_ON";
    pub const UNIQ_KEY: &str = "UNIQ_KEY";
    pub const EXTEND_UNIQ_INFO: &str = "EXTEND_UNIQ_INFO";
    pub const MAX_RECONSUME_TIMES: &str = "MAX_RECONSUME_TIMES";
    pub const CONSUME_START_TIME: &str = "CONSUME_START_TIME";
    pub const INNER_NUM: &str = "INNER_NUM";
    pub const INNER_BASE: &str = "INNER_BASE";
    pub const DUP_INFO: &str = "DUP_INFO";
    pub const CHECK_IMMUNITY_TIME_IN_SECONDS: &str = "CHECK_IMMUNITY_TIME_IN_SECONDS";
    pub const TRAN_PREPARED_QUEUE_OFFSET: &str = "TRAN_PREPARED_QUEUE_OFFSET";
    pub const TRANSACTION_ID: &str = "__transactionId__";
    pub const TRANSACTION_CHECK_TIMES: &str = "TRANSACTION_CHECK_TIMES";
    pub const INSTANCE_ID: &str = "INSTANCE_ID";
    pub const CORRELATION_ID: &str = "CORRELATION_ID";
    pub const REPLY_TO_CLIENT: &str = "REPLY_TO_CLIENT";
    pub const TTL: &str = "TTL";
    pub const ARRIVE_TIME: &str = "ARRIVE_TIME";
    pub const PUSH_REPLY_TIME: &str = "PUSH_REPLY_TIME";
    pub const CLUSTER: &str = "CLUSTER";
    pub const MSG_TYPE: &str = "MSG_TYPE";
    pub const POP_CK: &str = "POP_CK";
    pub const POP_CK_OFFSET: &str = "POP_CK_OFFSET";
    pub const FIRST_POP_TIME: &str = "1ST_POP_TIME";
    pub const SHARDING_KEY: &str = "__SHARDINGKEY";
    pub const FORWARD_QUEUE_ID: &str = "PROPERTY_FORWARD_QUEUE_ID";
    pub const REDIRECT: &str = "REDIRECT";
    pub const INNER_MULTI_DISPATCH: &str = "INNER_MULTI_DISPATCH";
    pub const INNER_MULTI_QUEUE_OFFSET: &str = "INNER_MULTI_QUEUE_OFFSET";
    pub const TRACE_CONTEXT: &str = "TRACE_CONTEXT";
    pub const TIMER_DELAY_SEC: &str = "TIMER_DELAY_SEC";
    pub const TIMER_DELIVER_MS: &str = "TIMER_DELIVER_MS";
    pub const TIMER_ENQUEUE_MS: &str = "TIMER_ENQUEUE_MS";
    pub const TIMER_DEQUEUE_MS: &str = "TIMER_DEQUEUE_MS";
    pub const TIMER_ROLL_TIMES: &str = "TIMER_ROLL_TIMES";
    pub const TIMER_OUT_MS: &str = "TIMER_OUT_MS";
    pub const TIMER_DEL_UNIQKEY: &str = "TIMER_DEL_UNIQKEY";
    pub const TIMER_DELAY_LEVEL: &str = "TIMER_DELAY_LEVEL";
    pub const TIMER_DELAY_MS: &str = "TIMER_DELAY_MS";
    pub const BORN_HOST: &str = "__BORNHOST";
    pub const BORN_TIMESTAMP: &str = "BORN_TIMESTAMP";
    pub const CRC32: &str = "__CRC32#";
    pub const DLQ_ORIGIN_TOPIC: &str = "DLQ_ORIGIN_TOPIC";
    pub const DLQ_ORIGIN_MESSAGE_ID: &str = "DLQ_ORIGIN_MESSAGE_ID";
    /// Prefix of properties the broker never stores (`__RMQ.TRANSIENT.`).
    pub const TRANSIENT_PREFIX: &str = "__RMQ.TRANSIENT.";
    /// Delivery time (ms since epoch) set by ApsaraMQ / ONS 4.x clients; not
    /// in Apache's `MessageConst`.
    pub const START_DELIVER_TIME: &str = "__STARTDELIVERTIME";
}

/// Java's `MessageConst.STRING_HASH_SET`: the names a 4.x client refuses as
/// user properties. Note that Java leaves some system names out of it
/// (`__SHARDINGKEY`, `TRANSACTION_CHECK_TIMES`, `CHECK_IMMUNITY_TIME_IN_SECONDS`,
/// `__transactionId__`, `INNER_NUM`, ...); callers mapping to 5.x must treat
/// those separately.
pub fn is_system_property(name: &str) -> bool {
    use names::*;
    matches!(
        name,
        TRACE_ON
            | MSG_REGION
            | KEYS
            | TAGS
            | WAIT
            | DELAY
            | RETRY_TOPIC
            | REAL_TOPIC
            | REAL_QID
            | TRAN_MSG
            | PGROUP
            | MIN_OFFSET
            | MAX_OFFSET
            | BUYER_ID
            | ORIGIN_MESSAGE_ID
            | TRANSFER_FLAG
            | CORRECTION_FLAG
            | MQ2_FLAG
            | RECONSUME_TIME
            | UNIQ_KEY
            | MAX_RECONSUME_TIMES
            | CONSUME_START_TIME
            | POP_CK
            | POP_CK_OFFSET
            | FIRST_POP_TIME
            | TRAN_PREPARED_QUEUE_OFFSET
            | DUP_INFO
            | EXTEND_UNIQ_INFO
            | INSTANCE_ID
            | CORRELATION_ID
            | REPLY_TO_CLIENT
            | TTL
            | ARRIVE_TIME
            | PUSH_REPLY_TIME
            | CLUSTER
            | MSG_TYPE
            | INNER_MULTI_QUEUE_OFFSET
            | TIMER_DELAY_MS
            | TIMER_DELAY_SEC
            | TIMER_DELIVER_MS
            | TIMER_ENQUEUE_MS
            | TIMER_DEQUEUE_MS
            | TIMER_ROLL_TIMES
            | TIMER_OUT_MS
            | TIMER_DEL_UNIQKEY
            | TIMER_DELAY_LEVEL
            | BORN_HOST
            | BORN_TIMESTAMP
            | DLQ_ORIGIN_TOPIC
            | DLQ_ORIGIN_MESSAGE_ID
            | CRC32
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_like_java() {
        let p = Properties::decode("TAGS\u{1}a\u{2}KEYS\u{1}k1 k2\u{2}\u{1}novalue\u{2}empty\u{1}\u{2}x\u{2}TAGS\u{1}b\u{2}v\u{1}has\u{1}sep");
        assert_eq!(p.get("TAGS"), Some("b"));
        assert_eq!(p.get("KEYS"), Some("k1 k2"));
        assert_eq!(p.get("empty"), None);
        assert_eq!(p.get("v"), Some("has\u{1}sep"));
        assert_eq!(p.len(), 3);
        assert_eq!(
            p.iter().next(),
            Some(("TAGS", "b")),
            "order of first insertion kept"
        );
    }

    #[test]
    fn encode_roundtrip() {
        let mut p: Properties = [("UNIQ_KEY", "ABC"), ("env", "gray")].into_iter().collect();
        assert_eq!(
            encode_properties(&p),
            "UNIQ_KEY\u{1}ABC\u{2}env\u{1}gray\u{2}"
        );
        assert_eq!(Properties::decode(&p.encode()), p);
        assert_eq!(p.remove("UNIQ_KEY").as_deref(), Some("ABC"));
        assert!(!p.contains("UNIQ_KEY"));
    }

    #[test]
    fn system_names() {
        assert!(is_system_property("UNIQ_KEY"));
        assert!(is_system_property("__BORNHOST"));
        assert!(is_system_property("TIMER_DELIVER_MS"));
        assert!(!is_system_property("__SHARDINGKEY"), "not in Java's set");
        assert!(!is_system_property("gray"));
    }
}
