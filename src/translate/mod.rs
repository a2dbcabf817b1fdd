//! Translation of one 4.x message record into one 5.x message (SPEC §3).
//!
//! Owns: the fidelity rules (body, tag, keys, message id, born time and host,
//! user versus system properties, provenance) and the choice of 5.x message
//! type from what the record is and what its target topic accepts.
//!
//! Must not touch: I/O, clocks, config parsing, checkpoints. Everything it
//! needs arrives as plain values (`SourceContext::now_ms` is the clock); the
//! pipeline decides what to do with an [`Untranslatable`] (quarantine it).
//!
//! # Message type
//!
//! A 5.x topic accepts a fixed set of types (normally exactly one). The record
//! is classified, then the first rule that the target accepts wins:
//!
//! | record                                   | rule, in order of preference                       |
//! |------------------------------------------|----------------------------------------------------|
//! | prepared or rolled-back half message     | never forwarded: [`Untranslatable::HalfTransaction`] |
//! | committed transaction                    | TRANSACTION, else NORMAL, else FIFO                |
//! | delay / scheduled (already due)          | DELAY, else NORMAL, else FIFO                      |
//! | ordered (has `__SHARDINGKEY`)            | FIFO, else NORMAL                                  |
//! | anything else                            | NORMAL, else FIFO                                  |
//!
//! Anything not covered (a plain message into a DELAY- or TRANSACTION-only
//! topic, an empty accepted-type set) is [`Untranslatable`] with a reason.
//!
//! A record that is not ordered may still go to a FIFO topic: its group is
//! then its source queue (`broker:queueId`), which keeps exactly the order a
//! 4.x consumer saw. That is the right default for a migration.

mod environment;
pub mod origin;
pub mod scheduled;

#[cfg(test)]
pub(crate) mod test_support;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::grpc::{MessageKind, OutgoingMessage, TopicMessageType};
use crate::remoting::{names, MessageRecord, TransactionType};

pub use crate::reserved::is_reserved_property;
pub use environment::{environment_name, environment_of};

/// Where a FIFO message's `message_group` comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FifoGroupSource {
    /// The record's sharding key (`__SHARDINGKEY`); a record without one uses
    /// its source queue, as [`FifoGroupSource::SourceQueue`] would.
    #[default]
    ShardingKey,
    /// Always the source queue, `"<brokerName>:<queueId>"`: strict per-queue
    /// order, exactly as 4.x orderly consumers saw it.
    SourceQueue,
}

/// User-property names for the optional provenance stamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvenanceNames {
    pub cluster: String,
    pub broker: String,
    pub queue: String,
    pub offset: String,
    /// The forwarding instance's client id, where instances share the estate.
    pub instance: String,
}

impl Default for ProvenanceNames {
    fn default() -> Self {
        Self {
            cluster: "bridge_source_cluster".to_string(),
            broker: "bridge_source_broker".to_string(),
            queue: "bridge_source_queue".to_string(),
            offset: "bridge_source_offset".to_string(),
            instance: "bridge_instance".to_string(),
        }
    }
}

/// Per-route translation settings (validated config, never raw input).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TranslateOptions {
    pub fifo_group_from: FifoGroupSource,
    /// `Some` stamps every message with its 4.x origin as user properties
    /// (these names win over a user property of the same name). Off by default.
    pub provenance: Option<ProvenanceNames>,
    /// Name of the 4.x cluster, for the provenance stamp.
    pub source_cluster: String,
    /// The forwarding instance's client id for the provenance stamp; empty
    /// (no stamp) unless instances share the estate.
    pub instance: String,
    /// The loop-prevention stamp (origin.rs) every message leaves with;
    /// None only where `[translate] loop_prevention = false`.
    pub origin: Option<origin::OriginStamp>,
}

/// Where the record was read, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceContext<'a> {
    pub broker_name: &'a str,
    pub queue_id: i32,
    /// Wall clock at translation, ms since the epoch.
    pub now_ms: i64,
}

/// The canonical text of a source queue, `"<brokerName>:<queueId>"`. Used as
/// FIFO group fallback and as the `queue` cutover routing key.
pub fn source_queue_label(broker_name: &str, queue_id: i32) -> String {
    format!("{broker_name}:{queue_id}")
}

/// What a 4.x record is, as far as choosing a 5.x message type goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// None of the below.
    Plain,
    /// Carries a sharding key.
    Ordered,
    /// Delay-level, timer or start-deliver-time message, or one that passed
    /// through the 4.x schedule topic.
    Delayed,
    /// A committed transactional message.
    Transaction,
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SourceKind::Plain => "a plain (normal) message",
            SourceKind::Ordered => "an ordered message (it has a sharding key)",
            SourceKind::Delayed => "a delay/scheduled message",
            SourceKind::Transaction => "a committed transactional message",
        })
    }
}

/// The transaction state of a half message that must not be forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HalfState {
    /// sysFlag says prepared, or `TRAN_MSG=true` without a commit type.
    Prepared,
    /// sysFlag says rolled back.
    RolledBack,
}

impl fmt::Display for HalfState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HalfState::Prepared => "prepared (uncommitted)",
            HalfState::RolledBack => "rolled-back",
        })
    }
}

/// The set of message types a 5.x target topic accepts
/// (`MessageQueue.accept_message_types` of its route).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AcceptedTypes {
    pub normal: bool,
    pub fifo: bool,
    pub delay: bool,
    pub transaction: bool,
}

impl AcceptedTypes {
    pub fn from_route(types: &[TopicMessageType]) -> Self {
        let mut accepted = Self::default();
        for t in types {
            match t {
                TopicMessageType::Normal => accepted.normal = true,
                TopicMessageType::Fifo => accepted.fifo = true,
                TopicMessageType::Delay => accepted.delay = true,
                TopicMessageType::Transaction => accepted.transaction = true,
            }
        }
        accepted
    }

    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl fmt::Display for AcceptedTypes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = [
            (self.normal, "NORMAL"),
            (self.fifo, "FIFO"),
            (self.delay, "DELAY"),
            (self.transaction, "TRANSACTION"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
        if names.is_empty() {
            f.write_str("no message type")
        } else {
            f.write_str(&names.join(", "))
        }
    }
}

/// Why a record cannot become a message its target topic accepts. The
/// pipeline quarantines the record with this reason; nothing is dropped
/// silently and the queue moves on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Untranslatable {
    /// A transactional half message (prepared or rolled back). These are
    /// never forwarded: only the broker's committed copy is a real message.
    /// A Java broker never puts one in a real topic, so seeing one means the
    /// route reads something unusual; quarantine makes that visible.
    HalfTransaction {
        topic: String,
        message_id: String,
        state: HalfState,
    },
    /// The target's route listed no message type (topic missing or untyped).
    UnknownTargetType { topic: String, message_id: String },
    /// The target does not accept any type this record can be sent as.
    TypeMismatch {
        topic: String,
        message_id: String,
        accepted: AcceptedTypes,
        kind: SourceKind,
    },
}

impl Untranslatable {
    /// A short, stable label for metrics and the quarantine listing.
    pub fn reason_code(&self) -> &'static str {
        match self {
            Untranslatable::HalfTransaction { .. } => "half_transaction",
            Untranslatable::UnknownTargetType { .. } => "unknown_target_type",
            Untranslatable::TypeMismatch { .. } => "type_mismatch",
        }
    }

    /// The 5.x topic the record was meant for.
    pub fn topic(&self) -> &str {
        match self {
            Untranslatable::HalfTransaction { topic, .. }
            | Untranslatable::UnknownTargetType { topic, .. }
            | Untranslatable::TypeMismatch { topic, .. } => topic,
        }
    }
}

impl fmt::Display for Untranslatable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Untranslatable::HalfTransaction {
                topic,
                message_id,
                state,
            } => write!(
                f,
                "message {message_id} for 5.x topic `{topic}` is a {state} transactional half \
                 message; half messages are never forwarded, only the committed copy the 4.x \
                 broker writes on commit. Check that the route reads the real topic, not the \
                 transaction half topic, then drop this entry from quarantine"
            ),
            Untranslatable::UnknownTargetType { topic, message_id } => write!(
                f,
                "5.x topic `{topic}` reports no accepted message type, so message {message_id} \
                 cannot be typed. Create the topic on 5.x with attribute \
                 message.type=NORMAL|FIFO|DELAY|TRANSACTION, then replay the quarantine"
            ),
            Untranslatable::TypeMismatch {
                topic,
                message_id,
                accepted,
                kind,
            } => {
                write!(
                    f,
                    "5.x topic `{topic}` accepts {accepted} only; message {message_id} is {kind}. "
                )?;
                let remedy = if accepted.transaction && !accepted.delay {
                    "Only committed 4.x transactional messages can go to a TRANSACTION topic: \
                     route this source topic to a NORMAL (or FIFO) topic, or change the target's \
                     message.type"
                } else if accepted.delay && !accepted.transaction {
                    "Only delay/scheduled 4.x messages can go to a DELAY topic: route this source \
                     topic to a NORMAL (or FIFO) topic, or change the target's message.type"
                } else {
                    "Route this source topic to a 5.x topic whose message.type is NORMAL (it \
                     accepts plain, delay and committed transactional messages) or FIFO"
                };
                f.write_str(remedy)
            }
        }
    }
}

impl std::error::Error for Untranslatable {}

/// What the record says about its transaction, delay and order.
struct Traits<'r> {
    committed_transaction: bool,
    /// `Some` for a delay/scheduled record; the inner value is the original
    /// delivery time when the record carries one.
    delay: Option<Option<i64>>,
    sharding_key: Option<&'r str>,
}

impl Traits<'_> {
    fn kind(&self) -> SourceKind {
        if self.committed_transaction {
            SourceKind::Transaction
        } else if self.delay.is_some() {
            SourceKind::Delayed
        } else if self.sharding_key.is_some() {
            SourceKind::Ordered
        } else {
            SourceKind::Plain
        }
    }
}

/// Classifies `record`, or names the half state that forbids forwarding it.
///
/// Transactions are detected as a Java broker leaves them: on commit it
/// rewrites the sysFlag transaction type to COMMIT, clears `TRAN_MSG` and
/// keeps `PGROUP` (the rocketmq-rust 1.0 broker does the same). So:
/// - type PREPARED or ROLLBACK: a half message;
/// - type COMMIT: committed;
/// - type NOT_TYPE with `TRAN_MSG=true`: a half message whose producer did not
///   set the sysFlag (a Java producer always sets both);
/// - type NOT_TYPE with `PGROUP` (and no `TRAN_MSG`): committed by a broker
///   that reset the sysFlag; only transactional producers set `PGROUP`.
fn classify(record: &MessageRecord) -> Result<Traits<'_>, HalfState> {
    let props = &record.properties;
    let tran_msg = props
        .get(names::TRAN_MSG)
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    let committed_transaction = match record.transaction_type() {
        TransactionType::Prepared => return Err(HalfState::Prepared),
        TransactionType::Rollback => return Err(HalfState::RolledBack),
        TransactionType::Commit => true,
        TransactionType::NotTransaction if tran_msg => return Err(HalfState::Prepared),
        TransactionType::NotTransaction => props.get(names::PGROUP).is_some_and(|g| !g.is_empty()),
    };

    let present = |name: &str| props.get(name).is_some_and(|v| !v.trim().is_empty());
    let time_of = |name: &str| props.get(name).and_then(|v| v.trim().parse::<i64>().ok());
    let delay_level = props
        .get(names::DELAY)
        .and_then(|v| v.trim().parse::<i64>().ok())
        .is_some_and(|level| level > 0);
    let delayed = delay_level
        || present(names::TIMER_DELIVER_MS)
        || present(names::START_DELIVER_TIME)
        || present(names::TIMER_DELAY_SEC)
        || present(names::TIMER_DELAY_MS)
        || present(names::REAL_TOPIC);
    let delay = delayed
        .then(|| time_of(names::TIMER_DELIVER_MS).or_else(|| time_of(names::START_DELIVER_TIME)));

    let sharding_key = props
        .get(names::SHARDING_KEY)
        .filter(|k| !k.trim().is_empty());

    Ok(Traits {
        committed_transaction,
        delay,
        sharding_key,
    })
}

/// The record's 5.x message type classification, or the half-message state
/// that stops it being forwarded. Exposed for dry runs and reporting.
pub fn source_kind(record: &MessageRecord) -> Result<SourceKind, HalfState> {
    classify(record).map(|t| t.kind())
}

/// Translates one 4.x `record` into the message to publish on `target_topic`,
/// whose route accepts `target_types`.
///
/// Fidelity:
/// - body byte-identical; tag from `TAGS`; keys from `KEYS` (split on spaces);
/// - `message_id` = `UNIQ_KEY`, else the broker's offset message id, so
///   re-sends after a restart carry the same id;
/// - born timestamp kept; `born_host` is the born host's **IP address without
///   port**: the Java 5.x client puts a host name there (never a port), a Java
///   4.x consumer's `getBornHostString()` is the bare IP, and the 4.x port is
///   the producer's ephemeral socket port, which identifies nothing;
/// - every user property kept (the environment tag included); every reserved
///   name ([`is_reserved_property`]) is mapped to its 5.x field or dropped;
/// - provenance properties when `opts.provenance` is set.
///
/// Message type: see the module documentation.
///
/// DELAY delivery time: the original delivery time (`TIMER_DELIVER_MS`, else
/// `__STARTDELIVERTIME`), else the record's store time (a delay-level record
/// in the real topic was stored there when it fell due), kept as it is even
/// when past: Java 5.x servers accept a past time and deliver at once. Some
/// servers (the rocketmq-rust proxy) refuse a time that is not in the
/// future; the send layer clamps with [`clamp_delivery`] once a route's
/// target refused one (pipeline/send.rs).
pub fn translate(
    record: &MessageRecord,
    target_topic: &str,
    target_types: &[TopicMessageType],
    ctx: &SourceContext<'_>,
    opts: &TranslateOptions,
) -> Result<OutgoingMessage, Untranslatable> {
    let message_id = record.message_id().to_string();
    let traits = classify(record).map_err(|state| Untranslatable::HalfTransaction {
        topic: target_topic.to_string(),
        message_id: message_id.clone(),
        state,
    })?;

    let accepted = AcceptedTypes::from_route(target_types);
    if accepted.is_empty() {
        return Err(Untranslatable::UnknownTargetType {
            topic: target_topic.to_string(),
            message_id,
        });
    }
    let kind = choose_kind(record, &traits, accepted, ctx, opts).ok_or_else(|| {
        Untranslatable::TypeMismatch {
            topic: target_topic.to_string(),
            message_id: message_id.clone(),
            accepted,
            kind: traits.kind(),
        }
    })?;

    Ok(OutgoingMessage {
        topic: target_topic.to_string(),
        message_id,
        body: record.body.clone(),
        tag: record.tag().filter(|t| !t.is_empty()).map(str::to_string),
        keys: record.keys().into_iter().map(str::to_string).collect(),
        user_properties: user_properties(record, ctx, opts),
        born_timestamp_ms: record.born_timestamp_ms,
        born_host: record.born_host.ip().to_string(),
        kind,
    })
}

/// The first message type, in the module's order of preference, that the
/// target accepts; `None` when it accepts none of them.
fn choose_kind(
    record: &MessageRecord,
    traits: &Traits<'_>,
    accepted: AcceptedTypes,
    ctx: &SourceContext<'_>,
    opts: &TranslateOptions,
) -> Option<MessageKind> {
    if traits.committed_transaction && accepted.transaction {
        return Some(MessageKind::Transaction);
    }
    if let (Some(original), true) = (traits.delay, accepted.delay) {
        let wanted = original.unwrap_or(record.store_timestamp_ms);
        return Some(MessageKind::Delay {
            delivery_timestamp_ms: wanted,
        });
    }
    if accepted.fifo && (traits.sharding_key.is_some() || !accepted.normal) {
        let group = match (opts.fifo_group_from, traits.sharding_key) {
            (FifoGroupSource::ShardingKey, Some(key)) => key.to_string(),
            _ => source_queue_label(ctx.broker_name, ctx.queue_id),
        };
        return Some(MessageKind::Fifo { group });
    }
    accepted.normal.then_some(MessageKind::Normal)
}

/// `wanted`, or `now_ms + min_ahead` when `wanted` is earlier than that.
pub fn clamp_delivery(wanted_ms: i64, now_ms: i64, min_ahead: Duration) -> i64 {
    let lead = i64::try_from(min_ahead.as_millis()).unwrap_or(i64::MAX);
    wanted_ms.max(now_ms.saturating_add(lead))
}

fn user_properties(
    record: &MessageRecord,
    ctx: &SourceContext<'_>,
    opts: &TranslateOptions,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (name, value) in record.properties.iter() {
        if !is_reserved_property(name) {
            out.insert(name.to_string(), value.to_string());
        }
    }
    if let Some(names) = &opts.provenance {
        out.insert(names.cluster.clone(), opts.source_cluster.clone());
        out.insert(names.broker.clone(), ctx.broker_name.to_string());
        out.insert(names.queue.clone(), ctx.queue_id.to_string());
        out.insert(names.offset.clone(), record.queue_offset.to_string());
        if !opts.instance.is_empty() {
            out.insert(names.instance.clone(), opts.instance.clone());
        }
    }
    if let Some(stamp) = &opts.origin {
        let carried = record.properties.get(&stamp.property);
        out.insert(
            stamp.property.clone(),
            origin::stamped(carried, record.message_id(), stamp),
        );
    }
    out
}

/// Whether the record came from its route's destination at some hop, so
/// sending it would close a loop (origin.rs).
pub fn looped(record: &MessageRecord, opts: &TranslateOptions) -> bool {
    opts.origin.as_ref().is_some_and(|stamp| {
        origin::looped(
            record.properties.get(&stamp.property),
            record.message_id(),
            stamp,
        )
    })
}
