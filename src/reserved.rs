//! The property names that belong to RocketMQ itself, not to the user: the
//! one list shared by translation (never copy them as user properties) and
//! the 5.x publisher's validation (a server refuses them).
//!
//! A 5.x server rejects a message whose user properties use a reserved name
//! (Java proxy: `MessageConst.STRING_HASH_SET`), and most of these names only
//! make sense inside a 4.x broker anyway. `translate` maps the meaningful ones
//! to 5.x system properties (tag, keys, message id, message group, delivery
//! time, born host and time) and drops the rest; none of them is ever copied
//! as a user property.
//!
//! `remoting::properties::is_system_property` is Java's `STRING_HASH_SET`,
//! which leaves out several system names (`__SHARDINGKEY`,
//! `__transactionId__`, `TRANSACTION_CHECK_TIMES`, `INNER_NUM`, ...). Copying
//! those as user properties would be wrong, so a name is reserved here when
//! it is in that set *or* in the list below.

use crate::remoting::properties::is_system_property;

/// Exact reserved names: Java `MessageConst` (4.9 and 5.x, including names
/// added after the reserved set was first published), plus the commercial
/// (ONS / ApsaraMQ) names `__STARTDELIVERTIME` and `__transactionId__`.
const RESERVED_NAMES: &[&str] = &[
    // tag, keys, client message id
    "TAGS",
    "KEYS",
    "UNIQ_KEY",
    "EXTEND_UNIQ_INFO",
    "ORIGIN_MESSAGE_ID",
    // send options
    "WAIT",
    "BUYER_ID",
    "INSTANCE_ID",
    "MSG_REGION",
    "TRACE_ON",
    "TRACE_CONTEXT",
    "TRANSFER_FLAG",
    "CORRECTION_FLAG",
    "MQ2_FLAG",
    "CLUSTER",
    "MSG_TYPE",
    "__BORNHOST",
    "BORN_TIMESTAMP",
    "__CRC32#",
    // ordering
    "__SHARDINGKEY",
    // delay / scheduled (level, ONS start time, schedule-topic bookkeeping);
    // TIMER_* names are matched by prefix below
    "DELAY",
    "__STARTDELIVERTIME",
    "REAL_TOPIC",
    "REAL_QID",
    // transactions
    "TRAN_MSG",
    "PGROUP",
    "TRAN_PREPARED_QUEUE_OFFSET",
    "TRANSACTION_CHECK_TIMES",
    "CHECK_IMMUNITY_TIME_IN_SECONDS",
    "__transactionId__",
    // consumption, retry and dead letters
    "RETRY_TOPIC",
    "RECONSUME_TIME",
    "MAX_RECONSUME_TIMES",
    "CONSUME_START_TIME",
    "DLQ_ORIGIN_TOPIC",
    "DLQ_ORIGIN_MESSAGE_ID",
    "POP_CK",
    "POP_CK_OFFSET",
    "1ST_POP_TIME",
    // pull bookkeeping
    "MIN_OFFSET",
    "MAX_OFFSET",
    // batches and duplicates
    "INNER_NUM",
    "INNER_BASE",
    "DUP_INFO",
    // request / reply
    "CORRELATION_ID",
    "REPLY_TO_CLIENT",
    "TTL",
    "ARRIVE_TIME",
    "PUSH_REPLY_TIME",
    // broker internals (light message queues, forwarding)
    "PROPERTY_FORWARD_QUEUE_ID",
    "REDIRECT",
    "INNER_MULTI_DISPATCH",
    "INNER_MULTI_QUEUE_OFFSET",
];

/// Reserved name prefixes: the 5.x timer family (`TIMER_DELIVER_MS`,
/// `TIMER_DELAY_SEC`, `TIMER_OUT_MS`, ...) and transient properties, which a
/// Java broker never stores but a foreign one might.
const RESERVED_PREFIXES: &[&str] = &["TIMER_", "__RMQ.TRANSIENT."];

/// True when `name` is a RocketMQ system property rather than a user one.
///
/// Matching is exact and case-sensitive, as in the Java broker: `tags` is a
/// user property, `TAGS` is not.
pub fn is_reserved_property(name: &str) -> bool {
    is_system_property(name)
        || RESERVED_NAMES.contains(&name)
        || RESERVED_PREFIXES.iter().any(|p| name.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::is_reserved_property;

    #[test]
    fn reserved_names_and_prefixes() {
        for name in [
            "TAGS",
            "KEYS",
            "UNIQ_KEY",
            "DELAY",
            "WAIT",
            "__SHARDINGKEY",
            "TRAN_MSG",
            "PGROUP",
            "REAL_TOPIC",
            "REAL_QID",
            "MIN_OFFSET",
            "MAX_OFFSET",
            "__STARTDELIVERTIME",
            "TIMER_DELIVER_MS",
            "TIMER_DELAY_SEC",
            "TIMER_ENQUEUE_MS",
            "RETRY_TOPIC",
            "RECONSUME_TIME",
            "MAX_RECONSUME_TIMES",
            "CONSUME_START_TIME",
            "TRAN_PREPARED_QUEUE_OFFSET",
            "TRANSACTION_CHECK_TIMES",
            "CHECK_IMMUNITY_TIME_IN_SECONDS",
            "ORIGIN_MESSAGE_ID",
            "CLUSTER",
            "MSG_REGION",
            "TRACE_ON",
            "INSTANCE_ID",
            "CORRECTION_FLAG",
            "__BORNHOST",
            "__RMQ.TRANSIENT.TOPIC_SYS_FLAG",
        ] {
            assert!(is_reserved_property(name), "{name} must be reserved");
        }
    }

    #[test]
    fn user_names_are_not_reserved() {
        for name in [
            "env", "gray", "tags", "orderId", "TIMER", "x-TAGS", "KEYS2", "",
        ] {
            assert!(
                !is_reserved_property(name),
                "{name} must be a user property"
            );
        }
    }
}
