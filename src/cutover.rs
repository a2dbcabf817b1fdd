//! The phased-cutover decision (SPEC §5): forward a 4.x record to 5.x, hold
//! it on 4.x only, or leave it out because its environment is not eligible.
//!
//! Owns: the bucket function, routing keys and environment eligibility.
//! Must not touch: I/O, counters, the cutover journal (the pipeline and the
//! checkpoint store own those). Pure functions over plain values.
//!
//! The bucket is `crc32(routing_key) % 100`, CRC-32/IEEE (zlib, Java
//! `java.util.zip.CRC32`, Go `hash/crc32.ChecksumIEEE`) over the key's UTF-8
//! bytes, so any application can tell which share a key is in:
//! `python3 -c "import zlib; print(zlib.crc32(b'order-1') % 100)"` prints 79.
//! A record is forwarded iff its bucket is below the route's percent, so
//! raising the percent only ever adds buckets: a key never moves back to 4.x
//! while the share grows.

pub mod history;

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use crate::remoting::{names, MessageRecord};
use crate::translate::{environment_of, source_queue_label};

/// Number of buckets; a percent is a count of buckets.
pub const BUCKETS: u32 = 100;

/// The environment-filter entry that stands for untagged (baseline) traffic.
pub const BASELINE: &str = "baseline";

/// `crc32(routing_key) % 100`, CRC-32/IEEE of the key's UTF-8 bytes.
pub fn bucket(routing_key: &str) -> u32 {
    crc32fast::hash(routing_key.as_bytes()) % BUCKETS
}

/// Which part of a record decides its bucket (`routing_key` in a route's
/// config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RoutingKeyMode {
    /// Sharding key, else first key, else message id (`auto`).
    #[default]
    Auto,
    /// Sharding key, else message id (`sharding_key`).
    ShardingKey,
    /// First of the record's keys, else message id (`key`).
    Key,
    /// Message id: `UNIQ_KEY`, else the offset message id (`msg_id`).
    MsgId,
    /// The source queue `"<brokerName>:<queueId>"` (`queue`): whole queues
    /// move at once, so strict per-queue order survives the cutover.
    Queue,
}

impl RoutingKeyMode {
    pub const ALL: [RoutingKeyMode; 5] = [
        RoutingKeyMode::Auto,
        RoutingKeyMode::ShardingKey,
        RoutingKeyMode::Key,
        RoutingKeyMode::MsgId,
        RoutingKeyMode::Queue,
    ];

    /// The config spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            RoutingKeyMode::Auto => "auto",
            RoutingKeyMode::ShardingKey => "sharding_key",
            RoutingKeyMode::Key => "key",
            RoutingKeyMode::MsgId => "msg_id",
            RoutingKeyMode::Queue => "queue",
        }
    }
}

impl fmt::Display for RoutingKeyMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `routing_key` value that names no [`RoutingKeyMode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownRoutingKeyMode(pub String);

impl fmt::Display for UnknownRoutingKeyMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` is not a routing key mode; use one of auto, sharding_key, key, msg_id, queue",
            self.0
        )
    }
}

impl std::error::Error for UnknownRoutingKeyMode {}

impl FromStr for RoutingKeyMode {
    type Err = UnknownRoutingKeyMode;

    /// Exact config spelling (surrounding whitespace ignored).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        Self::ALL
            .into_iter()
            .find(|mode| mode.as_str() == s)
            .ok_or_else(|| UnknownRoutingKeyMode(s.to_string()))
    }
}

/// The text whose bucket decides `record`'s fate under `mode`.
///
/// `ShardingKey` and `Key` fall back to the message id when the record has no
/// sharding key / no key, so every record has a stable, well-spread routing
/// key. `Queue` is `"<broker_name>:<queue_id>"` of the queue the record was
/// read from.
pub fn routing_key(
    record: &MessageRecord,
    mode: RoutingKeyMode,
    broker_name: &str,
    queue_id: i32,
) -> String {
    let sharding_key = || {
        record
            .properties
            .get(names::SHARDING_KEY)
            .filter(|k| !k.is_empty())
    };
    let first_key = || record.keys().into_iter().next();
    let key = match mode {
        RoutingKeyMode::Auto => sharding_key().or_else(first_key),
        RoutingKeyMode::ShardingKey => sharding_key(),
        RoutingKeyMode::Key => first_key(),
        RoutingKeyMode::MsgId => None,
        RoutingKeyMode::Queue => return source_queue_label(broker_name, queue_id),
    };
    key.unwrap_or_else(|| record.message_id()).to_string()
}

/// Which environments a route forwards.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum EnvironmentFilter {
    /// No filter: every record is eligible.
    #[default]
    All,
    /// Only records tagged with one of `tags`, plus untagged records when
    /// `baseline` is set.
    Only {
        tags: BTreeSet<String>,
        baseline: bool,
    },
}

impl EnvironmentFilter {
    /// From a route's `environments` list: `"baseline"` stands for untagged
    /// records (and also admits records explicitly tagged `baseline`); an
    /// empty list (or one with only blank names) means every record.
    /// Names are compared exactly, after trimming.
    pub fn from_names<I, S>(names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut tags = BTreeSet::new();
        let mut baseline = false;
        for name in names {
            let name = name.as_ref().trim();
            if name == BASELINE {
                baseline = true;
            }
            if !name.is_empty() {
                tags.insert(name.to_string());
            }
        }
        if tags.is_empty() {
            EnvironmentFilter::All
        } else {
            EnvironmentFilter::Only { tags, baseline }
        }
    }

    /// Whether a record whose environment tag is `environment` (`None` =
    /// untagged) is eligible.
    pub fn admits(&self, environment: Option<&str>) -> bool {
        match (self, environment) {
            (EnvironmentFilter::All, _) => true,
            (EnvironmentFilter::Only { baseline, .. }, None) => *baseline,
            (EnvironmentFilter::Only { tags, .. }, Some(env)) => tags.contains(env),
        }
    }
}

/// One route's cutover settings, as validated config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CutoverRule {
    /// 0..=100; values above 100 behave as 100.
    pub percent: u8,
    pub routing_key: RoutingKeyMode,
    pub environments: EnvironmentFilter,
    /// The user property carrying the environment tag.
    pub environment_property: String,
}

/// What to do with one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutoverDecision {
    /// Eligible and in the forwarded share: send it to 5.x.
    Forward,
    /// Eligible but in `bucket`, at or above the percent: 4.x only.
    Skip { bucket: u32 },
    /// Its environment is not in the route's filter: 4.x only.
    Filtered,
}

/// Decides `record`'s fate under `rule`: [`CutoverDecision::Filtered`] when
/// its environment is not eligible, else `Forward` iff
/// `bucket(routing_key) < percent`.
pub fn decide(
    record: &MessageRecord,
    rule: &CutoverRule,
    broker_name: &str,
    queue_id: i32,
) -> CutoverDecision {
    let environment = environment_of(record, &rule.environment_property);
    if !rule.environments.admits(environment.as_deref()) {
        return CutoverDecision::Filtered;
    }
    let bucket = bucket(&routing_key(
        record,
        rule.routing_key,
        broker_name,
        queue_id,
    ));
    if bucket < u32::from(rule.percent) {
        CutoverDecision::Forward
    } else {
        CutoverDecision::Skip { bucket }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::translate::test_support::RecordBuilder;

    const ENV: &str = "env";

    /// Buckets pinned with Python's zlib (`zlib.crc32(key) % 100`), so any
    /// application can reproduce them.
    #[test]
    fn bucket_matches_zlib_crc32() {
        let table: &[(&str, u32, u32)] = &[
            // key, zlib.crc32(key), bucket
            ("123456789", 0xCBF4_3926, 62), // the CRC-32/IEEE check value
            ("order-1", 3_769_860_079, 79),
            ("order-2", 2_042_244_693, 93),
            ("", 0, 0),
            ("a", 3_904_355_907, 7),
            ("broker-a:0", 2_879_514_631, 31),
            ("user-42", 2_097_592_435, 35),
            ("C0A8010100002A9F0000000000000000", 3_041_704_750, 50),
            ("订单-7", 3_927_923_417, 17), // UTF-8 bytes, not UTF-16
        ];
        for &(key, crc, expected) in table {
            assert_eq!(crc32fast::hash(key.as_bytes()), crc, "crc of {key:?}");
            assert_eq!(bucket(key), expected, "bucket of {key:?}");
        }
    }

    #[test]
    fn routing_key_mode_parses_config_spelling() {
        for mode in RoutingKeyMode::ALL {
            assert_eq!(mode.as_str().parse::<RoutingKeyMode>(), Ok(mode));
            assert_eq!(mode.to_string(), mode.as_str());
        }
        assert_eq!(
            " queue ".parse::<RoutingKeyMode>(),
            Ok(RoutingKeyMode::Queue)
        );
        let err = "Queue".parse::<RoutingKeyMode>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "`Queue` is not a routing key mode; use one of auto, sharding_key, key, msg_id, queue"
        );
        assert!("msgid".parse::<RoutingKeyMode>().is_err());
        assert_eq!(RoutingKeyMode::default(), RoutingKeyMode::Auto);
    }

    #[test]
    fn routing_key_table() {
        let full = RecordBuilder::new()
            .uniq_key("UNIQ-1")
            .prop("__SHARDINGKEY", "order-1")
            .prop("KEYS", "k1 k2")
            .build();
        let keys_only = RecordBuilder::new()
            .uniq_key("UNIQ-2")
            .prop("KEYS", "  k3 k4")
            .build();
        let bare = RecordBuilder::new().uniq_key("UNIQ-3").build();
        let no_uniq = RecordBuilder::new()
            .offset_msg_id("0A00000100002A9F0000000000000042")
            .build();
        let empty_sharding = RecordBuilder::new()
            .uniq_key("UNIQ-4")
            .prop("__SHARDINGKEY", "")
            .prop("KEYS", "k5")
            .build();

        use RoutingKeyMode::*;
        let table: &[(&MessageRecord, RoutingKeyMode, &str)] = &[
            (&full, Auto, "order-1"),
            (&full, ShardingKey, "order-1"),
            (&full, Key, "k1"),
            (&full, MsgId, "UNIQ-1"),
            (&full, Queue, "broker-a:3"),
            (&keys_only, Auto, "k3"),
            (&keys_only, ShardingKey, "UNIQ-2"),
            (&keys_only, Key, "k3"),
            (&bare, Auto, "UNIQ-3"),
            (&bare, ShardingKey, "UNIQ-3"),
            (&bare, Key, "UNIQ-3"),
            (&bare, Queue, "broker-a:3"),
            (&no_uniq, Auto, "0A00000100002A9F0000000000000042"),
            (&no_uniq, MsgId, "0A00000100002A9F0000000000000042"),
            (&empty_sharding, Auto, "k5"),
            (&empty_sharding, ShardingKey, "UNIQ-4"),
        ];
        for (i, &(record, mode, expected)) in table.iter().enumerate() {
            assert_eq!(
                routing_key(record, mode, "broker-a", 3),
                expected,
                "row {i} ({mode})"
            );
        }
    }

    #[test]
    fn environment_filter_from_names() {
        assert_eq!(
            EnvironmentFilter::from_names(Vec::<String>::new()),
            EnvironmentFilter::All
        );
        assert_eq!(
            EnvironmentFilter::from_names([" ", ""]),
            EnvironmentFilter::All
        );

        let gray = EnvironmentFilter::from_names(["gray"]);
        assert!(gray.admits(Some("gray")));
        assert!(!gray.admits(Some("blue")));
        assert!(!gray.admits(Some("Gray")));
        assert!(!gray.admits(None));

        let baseline = EnvironmentFilter::from_names(["baseline"]);
        assert!(baseline.admits(None));
        assert!(baseline.admits(Some("baseline")));
        assert!(!baseline.admits(Some("gray")));

        let both = EnvironmentFilter::from_names([" gray ", "baseline"]);
        assert!(both.admits(None));
        assert!(both.admits(Some("gray")));
        assert!(!both.admits(Some("blue")));

        let all = EnvironmentFilter::All;
        assert!(all.admits(None));
        assert!(all.admits(Some("anything")));
    }

    fn rule(percent: u8, mode: RoutingKeyMode, envs: &[&str]) -> CutoverRule {
        CutoverRule {
            percent,
            routing_key: mode,
            environments: EnvironmentFilter::from_names(envs),
            environment_property: ENV.to_string(),
        }
    }

    #[test]
    fn decide_table() {
        use CutoverDecision::*;
        // "order-1" is in bucket 79, "order-2" in 93, "broker-a:0" in 31.
        let order1 = RecordBuilder::new()
            .uniq_key("U1")
            .prop("__SHARDINGKEY", "order-1")
            .build();
        let order1_gray = RecordBuilder::new()
            .uniq_key("U2")
            .prop("__SHARDINGKEY", "order-1")
            .prop(ENV, "gray")
            .build();
        let order2_gray_json = RecordBuilder::new()
            .uniq_key("U3")
            .prop("__SHARDINGKEY", "order-2")
            .prop(ENV, r#"[{"name":"gray"}]"#)
            .build();
        let order1_blue = RecordBuilder::new()
            .uniq_key("U4")
            .prop("__SHARDINGKEY", "order-1")
            .prop(ENV, r#"{"name":"blue"}"#)
            .build();

        use RoutingKeyMode::*;
        let table: &[(&MessageRecord, CutoverRule, CutoverDecision)] = &[
            (&order1, rule(0, Auto, &[]), Skip { bucket: 79 }),
            (&order1, rule(79, Auto, &[]), Skip { bucket: 79 }),
            (&order1, rule(80, Auto, &[]), Forward),
            (&order1, rule(100, Auto, &[]), Forward),
            (&order1, rule(255, Auto, &[]), Forward),
            // queue mode: the bucket of "broker-a:0" (31), whatever the key
            (&order1, rule(31, Queue, &[]), Skip { bucket: 31 }),
            (&order1, rule(32, Queue, &[]), Forward),
            // environment filter comes first, whatever the percent
            (&order1, rule(100, Auto, &["gray"]), Filtered),
            (&order1, rule(100, Auto, &["gray", "baseline"]), Forward),
            (&order1_gray, rule(100, Auto, &["gray"]), Forward),
            (&order1_gray, rule(50, Auto, &["gray"]), Skip { bucket: 79 }),
            (&order1_gray, rule(100, Auto, &["baseline"]), Filtered),
            (&order2_gray_json, rule(94, Auto, &["gray"]), Forward),
            (
                &order2_gray_json,
                rule(93, Auto, &["gray"]),
                Skip { bucket: 93 },
            ),
            (
                &order1_blue,
                rule(100, Auto, &["gray", "baseline"]),
                Filtered,
            ),
            (&order1_blue, rule(100, Auto, &[]), Forward),
        ];
        for (i, (record, rule, expected)) in table.iter().enumerate() {
            assert_eq!(decide(record, rule, "broker-a", 0), *expected, "row {i}");
        }
    }

    #[test]
    fn zero_percent_forwards_nothing_and_hundred_forwards_everything() {
        for i in 0..500 {
            let record = RecordBuilder::new().uniq_key(&format!("K{i}")).build();
            assert!(matches!(
                decide(&record, &rule(0, RoutingKeyMode::MsgId, &[]), "b", 0),
                CutoverDecision::Skip { .. }
            ));
            assert_eq!(
                decide(&record, &rule(100, RoutingKeyMode::MsgId, &[]), "b", 0),
                CutoverDecision::Forward
            );
        }
    }

    proptest! {
        /// Raising the percent never turns a Forward into a Skip.
        #[test]
        fn raising_percent_is_monotonic(
            key in ".{0,40}",
            keys in "[a-z0-9 ]{0,20}",
            env in prop::option::of(prop_oneof![Just("gray"), Just("blue")]),
            mode in prop::sample::select(RoutingKeyMode::ALL.to_vec()),
            a in 0u8..=100,
            b in 0u8..=100,
        ) {
            let (p1, p2) = (a.min(b), a.max(b));
            let mut builder = RecordBuilder::new().uniq_key(&key).prop("KEYS", &keys);
            if !key.is_empty() {
                builder = builder.prop("__SHARDINGKEY", &key);
            }
            if let Some(env) = env {
                builder = builder.prop(ENV, env);
            }
            let record = builder.build();
            for envs in [&[][..], &["gray"][..], &["baseline", "blue"][..]] {
                let low = decide(&record, &rule(p1, mode, envs), "broker-b", 7);
                let high = decide(&record, &rule(p2, mode, envs), "broker-b", 7);
                if low == CutoverDecision::Forward {
                    prop_assert_eq!(high, CutoverDecision::Forward);
                }
                if let CutoverDecision::Skip { bucket } = high {
                    prop_assert_eq!(low, CutoverDecision::Skip { bucket });
                }
                // the filter does not depend on the percent
                prop_assert_eq!(
                    low == CutoverDecision::Filtered,
                    high == CutoverDecision::Filtered
                );
            }
        }

        #[test]
        fn bucket_is_below_100(key in ".*") {
            prop_assert!(bucket(&key) < BUCKETS);
        }
    }
}
