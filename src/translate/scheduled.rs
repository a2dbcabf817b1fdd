//! Pending scheduled (delay-level) messages read from the 4.x schedule topic
//! `SCHEDULE_TOPIC_XXXX` (ISSUE 11, SPEC section 8).
//!
//! A 4.x broker stores a message sent with delay level `L` in the schedule
//! topic, queue `L - 1`, with its real topic and queue in `REAL_TOPIC` /
//! `REAL_QID`, and moves a copy into the real topic when
//! `store time + delay(L)` has come (Java `ScheduleMessageService`: the copy
//! keeps body, flag, sysFlag, born time and host and every property, the
//! client id `UNIQ_KEY` included, clears `DELAY`, gets a new offset message
//! id and a new store time).
//!
//! Owns: the level table, which schedule-topic records belong to a route,
//! their original deadline, the key that recognises the later real-topic
//! copy of a forwarded message, and the translation into a 5.x DELAY
//! message. Pure: the clock arrives as a value. Must not touch: I/O,
//! checkpoints, the forwarded-id store.

use std::fmt;
use std::time::Duration;

use crate::grpc::{MessageKind, OutgoingMessage, TopicMessageType};
use crate::remoting::{names, MessageRecord};

use super::{translate, AcceptedTypes, SourceContext, TranslateOptions};
use super::{SourceKind, Untranslatable};

/// The 4.x schedule topic (Java `TopicValidator.RMQ_SYS_SCHEDULE_TOPIC`).
pub const SCHEDULE_TOPIC: &str = "SCHEDULE_TOPIC_XXXX";

/// The 4.x brokers' default `messageDelayLevel`.
pub const DEFAULT_DELAY_LEVELS: &str = "1s 5s 10s 30s 1m 2m 3m 4m 5m 6m 7m 8m 9m 10m 20m 30m 1h 2h";

/// A pending message due sooner than this is left to the real topic: the
/// broker moves it there about now, and the route's topic path forwards it.
/// Forwarding it from the schedule topic as well would race that copy.
pub const PENDING_MIN_LEAD: Duration = Duration::from_secs(5);

/// The broker's delay level table: level `n` (1-based) waits `delays[n-1]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DelayLevels {
    delays: Vec<Duration>,
}

/// One entry of a level table that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLevel {
    /// 1-based level number.
    pub level: usize,
    pub entry: String,
}

impl fmt::Display for BadLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "level {} `{}` is not a positive whole number followed by s, m, h or d (e.g. 30s, 1m)",
            self.level, self.entry
        )
    }
}

impl Default for DelayLevels {
    fn default() -> Self {
        match Self::parse(DEFAULT_DELAY_LEVELS) {
            Ok(levels) => levels,
            Err(_) => Self { delays: Vec::new() },
        }
    }
}

impl DelayLevels {
    /// Parses the broker's syntax: space-separated `<n><s|m|h|d>` entries.
    /// Every bad entry is named; an empty table is one error at level 0.
    pub fn parse(text: &str) -> Result<Self, Vec<BadLevel>> {
        let mut delays = Vec::new();
        let mut bad = Vec::new();
        for (i, entry) in text.split_whitespace().enumerate() {
            match parse_entry(entry) {
                Some(d) => delays.push(d),
                None => bad.push(BadLevel {
                    level: i + 1,
                    entry: entry.to_string(),
                }),
            }
        }
        if delays.is_empty() && bad.is_empty() {
            bad.push(BadLevel {
                level: 0,
                entry: text.to_string(),
            });
        }
        if bad.is_empty() {
            Ok(Self { delays })
        } else {
            Err(bad)
        }
    }

    /// The delay of `level` (1-based); `None` outside the table.
    pub fn delay(&self, level: i32) -> Option<Duration> {
        let index = usize::try_from(level).ok()?.checked_sub(1)?;
        self.delays.get(index).copied()
    }

    pub fn len(&self) -> usize {
        self.delays.len()
    }

    pub fn is_empty(&self) -> bool {
        self.delays.is_empty()
    }
}

impl fmt::Display for DelayLevels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text: Vec<String> = self.delays.iter().map(|d| short(*d)).collect();
        f.write_str(&text.join(" "))
    }
}

fn short(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        _ if s % 86_400 == 0 => format!("{}d", s / 86_400),
        _ if s % 3_600 == 0 => format!("{}h", s / 3_600),
        _ if s % 60 == 0 => format!("{}m", s / 60),
        _ => format!("{s}s"),
    }
}

fn parse_entry(entry: &str) -> Option<Duration> {
    let unit = entry.chars().last()?;
    let secs = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3_600,
        'd' => 86_400,
        _ => return None,
    };
    let number = &entry[..entry.len() - 1];
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = number.parse().ok().filter(|n| *n > 0)?;
    Some(Duration::from_secs(n.checked_mul(secs)?))
}

/// The delay level a schedule-topic queue holds (queue = level - 1).
pub fn level_of_queue(queue_id: i32) -> i32 {
    queue_id.saturating_add(1)
}

/// When the broker delivers a schedule-topic record: its store time plus
/// its level's delay (Java `computeDeliverTimestamp`).
pub fn deadline_ms(store_timestamp_ms: i64, delay: Duration) -> i64 {
    let delay = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
    store_timestamp_ms.saturating_add(delay)
}

/// A route's 4.x tag filter (`*`, or tags joined by `||`), applied by the
/// bridge to schedule-topic records: there the broker's tag filter cannot
/// work (their consume-queue tag code is the delivery time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagFilter {
    tags: Option<Vec<String>>,
}

impl TagFilter {
    pub fn parse(expression: &str) -> Self {
        let tags: Vec<String> = expression
            .split("||")
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .collect();
        if tags.is_empty() || tags.iter().any(|t| t == "*") {
            Self { tags: None }
        } else {
            Self { tags: Some(tags) }
        }
    }

    pub fn matches(&self, tag: Option<&str>) -> bool {
        match &self.tags {
            None => true,
            Some(tags) => tag.is_some_and(|t| tags.iter().any(|x| x == t)),
        }
    }
}

/// What a route does with one schedule-topic record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PendingDecision {
    /// Its real topic is another topic (or a retry topic), or the route's
    /// tag filter excludes it.
    NotOurs,
    /// Due within [`PENDING_MIN_LEAD`] or already due: the real topic gets
    /// it from the broker and the topic path forwards it from there.
    Due { deadline_ms: i64 },
    /// Still pending: forward it as DELAY with this deadline.
    Pending {
        deadline_ms: i64,
        real_queue_id: i32,
    },
    /// The bridge's level table has no entry for the record's level.
    UnknownLevel { level: i32, table_len: usize },
}

/// Decides about one record read from schedule queue `queue_id`.
pub fn decide_pending(
    record: &MessageRecord,
    queue_id: i32,
    source_topic: &str,
    filter: &TagFilter,
    levels: &DelayLevels,
    now_ms: i64,
) -> PendingDecision {
    if record.properties.get(names::REAL_TOPIC) != Some(source_topic)
        || !filter.matches(record.tag())
    {
        return PendingDecision::NotOurs;
    }
    let level = level_of_queue(queue_id);
    let Some(delay) = levels.delay(level) else {
        return PendingDecision::UnknownLevel {
            level,
            table_len: levels.len(),
        };
    };
    let deadline_ms = deadline_ms(record.store_timestamp_ms, delay);
    let lead = i64::try_from(PENDING_MIN_LEAD.as_millis()).unwrap_or(i64::MAX);
    if deadline_ms < now_ms.saturating_add(lead) {
        return PendingDecision::Due { deadline_ms };
    }
    let real_queue_id = record
        .properties
        .get(names::REAL_QID)
        .and_then(|q| q.trim().parse().ok())
        .unwrap_or(record.queue_id);
    PendingDecision::Pending {
        deadline_ms,
        real_queue_id,
    }
}

/// The key under which a forwarded pending message is remembered, the same
/// for its schedule-topic record and the broker's later real-topic copy:
/// the client message id (`UNIQ_KEY`), else (a producer that sets none)
/// born time, born host address and body checksum, which the broker copies.
/// Without `UNIQ_KEY` the 5.x message id is the schedule record's offset id,
/// which the real-topic copy does not share.
pub fn forward_key(record: &MessageRecord) -> String {
    match record.uniq_key().filter(|k| !k.is_empty()) {
        Some(id) => format!("u:{id}"),
        None => format!(
            "f:{}/{}/{:08x}",
            record.born_timestamp_ms,
            record.born_host.ip(),
            crc32fast::hash(&record.body)
        ),
    }
}

/// Whether a real-topic record may be the broker's copy of a schedule-topic
/// message (only those can have been forwarded early).
pub fn passed_schedule_topic(record: &MessageRecord) -> bool {
    record.properties.get(names::REAL_TOPIC).is_some()
}

/// Translates a pending schedule-topic record into a 5.x DELAY message with
/// its original deadline, even past (see [`super::translate`]): same message id, body, tag, keys, born time and
/// host, user properties. A target that does not accept DELAY is a type
/// mismatch: a pending message must not become due early.
pub fn translate_pending(
    record: &MessageRecord,
    deadline_ms: i64,
    target_topic: &str,
    target_types: &[TopicMessageType],
    ctx: &SourceContext<'_>,
    opts: &TranslateOptions,
) -> Result<OutgoingMessage, Untranslatable> {
    let accepted = AcceptedTypes::from_route(target_types);
    if accepted.is_empty() {
        return Err(Untranslatable::UnknownTargetType {
            topic: target_topic.to_string(),
            message_id: record.message_id().to_string(),
        });
    }
    if !accepted.delay {
        return Err(Untranslatable::TypeMismatch {
            topic: target_topic.to_string(),
            message_id: record.message_id().to_string(),
            accepted,
            kind: SourceKind::Delayed,
        });
    }
    let mut message = translate(record, target_topic, &[TopicMessageType::Delay], ctx, opts)?;
    message.kind = MessageKind::Delay {
        delivery_timestamp_ms: deadline_ms,
    };
    Ok(message)
}

#[cfg(test)]
mod tests;
